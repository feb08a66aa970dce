//! The directory of instances: who owns which store partition, and where its HTTP server
//! is, so any instance can answer any key (Kafka Streams stops at "here is the host").
//!
//! librdkafka cannot carry assignor user data, so ownership travels outside the group
//! protocol: every instance publishes what it holds to the compacted topic
//! `<application_id>-members` (key = instance id) whenever that changes, and as a
//! heartbeat; every instance reads the whole topic. A claim whose heartbeat is older than
//! `stale_after` counts for nothing (a killed instance), and two claims on one partition
//! (a handover seen half-way) resolve to the fresher heartbeat. Where no fresh claim
//! exists, a query answers 503 with Retry-After: never a wrong owner.

use super::catalog::Catalog;
use super::reader::{Followed, PartitionReader};
use crate::record::TopicPartition;
use rdkafka::message::BorrowedMessage;
use crate::kafka::{Clients, PolledProducer};
use super::RuntimeError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer};
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

/// How often an instance publishes its claims when nothing changed.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// What one instance holds, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub instance: String,
    /// Where its query server answers, `host:port`.
    pub http: String,
    /// Store → partitions it holds (restored and serving).
    pub stores: BTreeMap<String, Vec<i32>>,
    /// Store → partitions it keeps warm standby copies of.
    #[serde(default)]
    pub standbys: BTreeMap<String, Vec<i32>>,
    /// Wall-clock time of this publication, in ms.
    pub heartbeat_ms: i64,
    /// Which run of the instance published this (new at every start): two live processes
    /// with one instance id publish different incarnations.
    #[serde(default)]
    pub incarnation: String,
}

/// What the address a possible twin advertised says about it (`Directory::refuse_duplicate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Nothing listens there, or another instance, or this very run: it is not serving.
    Gone,
    /// Another run of this instance id answers there: a live twin.
    Serving,
    /// No answer that tells (a timeout, an unreachable host, a version that does not say
    /// who it is): its heartbeat decides.
    Unknown,
}

/// The owner of one store partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub instance: String,
    pub http: String,
}

pub struct Directory {
    pub me: Owner,
    /// This run of the instance (see `Member::incarnation`).
    pub incarnation: String,
    members: RwLock<BTreeMap<String, Member>>,
    stale_after: Duration,
    /// Set once the reader has read the topic as far as it reached at start.
    loaded: AtomicBool,
    /// After loading: another run publishing under this instance's id, alive (its HTTP
    /// address).
    duplicate: RwLock<Option<String>>,
    /// At loading: the last record another run left under this instance's id, if any.
    predecessor: RwLock<Option<Member>>,
    /// The duplicate check passed: the publisher may publish under our id.
    checked: AtomicBool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Directory {
    pub fn new(me: Owner, stale_after: Duration) -> Self {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Self {
            incarnation: format!("{}-{started:x}", std::process::id()),
            me,
            members: RwLock::new(BTreeMap::new()),
            stale_after,
            loaded: AtomicBool::new(false),
            duplicate: RwLock::new(None),
            predecessor: RwLock::new(None),
            checked: AtomicBool::new(false),
        }
    }

    /// The reader has caught up with the topic as it was at start.
    fn mark_loaded(&self) {
        let mine = self.members.read().expect("directory lock").get(&self.me.instance).cloned();
        *self.predecessor.write().expect("directory lock") = mine.filter(|m| m.incarnation != self.incarnation);
        self.loaded.store(true, Ordering::SeqCst);
    }

    /// Takes one record of the members topic (None = the instance left).
    pub fn apply(&self, instance: &str, value: Option<&[u8]>) {
        let mut members = self.members.write().expect("directory lock");
        match value.and_then(|v| serde_json::from_slice::<Member>(v).ok()) {
            Some(m) => {
                // Read after start-up, another run's heartbeat under our id that moved on
                // from what it had left: that run is alive. (Wall clocks are not compared:
                // the other run may be on another host.)
                if instance == self.me.instance && m.incarnation != self.incarnation && self.loaded.load(Ordering::SeqCst) {
                    let predecessor = self.predecessor.read().expect("directory lock");
                    let moved_on = predecessor.as_ref().is_none_or(|p| p.incarnation != m.incarnation || m.heartbeat_ms > p.heartbeat_ms);
                    if moved_on {
                        *self.duplicate.write().expect("directory lock") = Some(m.http.clone());
                    }
                }
                members.insert(instance.to_string(), m);
            }
            None => {
                members.remove(instance);
            }
        }
    }

    /// Fresh claims on partition `partition` of `store`, freshest first.
    fn claims(&self, store: &str, partition: i32) -> Vec<Member> {
        let oldest = now_ms() - self.stale_after.as_millis() as i64;
        let members = self.members.read().expect("directory lock");
        let mut claims: Vec<Member> = members
            .values()
            .filter(|m| m.heartbeat_ms >= oldest && m.stores.get(store).is_some_and(|ps| ps.contains(&partition)))
            .cloned()
            .collect();
        claims.sort_by_key(|m| std::cmp::Reverse(m.heartbeat_ms));
        claims
    }

    /// Who serves partition `partition` of `store` now, if anyone fresh claims it.
    pub fn owner(&self, store: &str, partition: i32) -> Option<Owner> {
        self.claims(store, partition).into_iter().next().map(|m| Owner { instance: m.instance, http: m.http })
    }

    /// The routing table: for each store partition, its owner and standbys, with their
    /// HTTP addresses, as this instance sees them now.
    pub fn table(&self) -> BTreeMap<String, BTreeMap<i32, (Option<Owner>, Vec<Owner>)>> {
        let live = self.live();
        let mut out: BTreeMap<String, BTreeMap<i32, (Option<Owner>, Vec<Owner>)>> = BTreeMap::new();
        for m in &live {
            for (store, parts) in &m.standbys {
                for p in parts {
                    let entry = out.entry(store.clone()).or_default().entry(*p).or_default();
                    entry.1.push(Owner { instance: m.instance.clone(), http: m.http.clone() });
                }
            }
            for (store, parts) in &m.stores {
                for p in parts {
                    out.entry(store.clone()).or_default().entry(*p).or_default().0 = self.owner(store, *p);
                }
            }
        }
        out
    }

    /// Refuses to start while another live process publishes under this instance's id: two
    /// of them would fence each other's transactions and group membership for ever.
    /// Waits for the reader to load the topic (at most `load_timeout`), then, only if
    /// another run left a recent record (a crash a moment ago, or a live twin), for one
    /// heartbeat and a second: a live twin publishes again, a dead one does not.
    ///
    /// Meanwhile `ask` asks the address that run advertised who serves there
    /// (`runtime/predecessor.rs`), and its answer ends the wait early. A restart on a new
    /// address (a rescheduled pod with a new IP) would otherwise wait the 3 s every time.
    pub fn refuse_duplicate(
        &self,
        load_timeout: Duration,
        ask: impl FnOnce(&Member) -> mpsc::Receiver<Presence>,
    ) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + load_timeout;
        while !self.loaded.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                tracing::warn!("members directory not loaded in time; starting without the duplicate-id check");
                self.checked.store(true, Ordering::SeqCst);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(predecessor) = self.possible_twin() {
            let answer = ask(&predecessor);
            let until = Instant::now() + HEARTBEAT + Duration::from_secs(1);
            while Instant::now() < until && self.duplicate.read().expect("directory lock").is_none() {
                match answer.try_recv() {
                    Ok(Presence::Gone) => {
                        tracing::info!(address = %predecessor.http, "the last run under this instance id no longer serves at its address");
                        break;
                    }
                    Ok(Presence::Serving) => {
                        *self.duplicate.write().expect("directory lock") = Some(predecessor.http.clone());
                        break;
                    }
                    Ok(Presence::Unknown) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        match self.duplicate.read().expect("directory lock").clone() {
            Some(http) => Err(RuntimeError::DuplicateInstance { instance: self.me.instance.clone(), http }),
            None => {
                self.checked.store(true, Ordering::SeqCst);
                Ok(())
            }
        }
    }

    /// The last record another run left under this id, if it could be a live twin's, so
    /// the check must find out: it is recent, and it advertised another address than this
    /// run's. A predecessor that advertised the address this run now listens on cannot be
    /// serving there any more (two processes cannot hold one listening address): a restart
    /// after a crash, with its fixed address, starts at once. (Advertised addresses are per
    /// instance, or forwarding would not work.)
    fn possible_twin(&self) -> Option<Member> {
        self.predecessor.read().expect("directory lock").clone().filter(|p| {
            // Generous with clock skew: a record this recent may be a live twin's.
            let recent = now_ms() - p.heartbeat_ms < (self.stale_after + Duration::from_secs(10)).as_millis() as i64;
            recent && p.http != self.me.http
        })
    }

    /// Every instance with a fresh heartbeat.
    pub fn live(&self) -> Vec<Member> {
        let oldest = now_ms() - self.stale_after.as_millis() as i64;
        self.members.read().expect("directory lock").values().filter(|m| m.heartbeat_ms >= oldest).cloned().collect()
    }
}

/// Publishes this instance's claims on change and every `HEARTBEAT`, and a tombstone when
/// it stops; reads every instance's claims into `directory`. Runs until `stop`.
/// What an instance keeps standby copies of, for its publication.
pub type StandbySet = Arc<dyn Fn() -> BTreeMap<String, Vec<i32>> + Send + Sync>;

pub fn spawn(
    directory: Arc<Directory>,
    catalog: Arc<Catalog>,
    standbys: Option<StandbySet>,
    topic: String,
    clients: Clients,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let reader = {
        let (directory, topic, clients, stop) = (directory.clone(), topic.clone(), clients.clone(), stop.clone());
        std::thread::Builder::new()
            .name("millrace-members-reader".into())
            .spawn(move || {
                if let Err(e) = read_loop(&directory, &topic, &clients, &stop) {
                    tracing::error!(error = %e, "members reader stopped; routing to other instances is off");
                    // Nobody will load the directory: do not hold the start-up check up.
                    directory.mark_loaded();
                }
            })
            .expect("spawn members reader")
    };
    let publisher = std::thread::Builder::new()
        .name("millrace-members-publisher".into())
        .spawn(move || {
            if let Err(e) = publish_loop(&directory, &catalog, standbys, &topic, &clients, &stop) {
                tracing::error!(error = %e, "members publisher stopped; other instances will stop routing here");
            }
        })
        .expect("spawn members publisher");
    vec![reader, publisher]
}

/// The instances whose heartbeat in the members topic is fresh now (for tools that must
/// not run beside a live application, such as `millrace rebuild`). Reads the topic once.
pub fn live_instances(clients: &Clients, topic: &str) -> Result<Vec<Member>, RuntimeError> {
    let directory = Directory::new(Owner { instance: String::new(), http: String::new() }, HEARTBEAT * 3);
    let reader = PartitionReader::new(clients, "read members", format!("millrace-members-check-{topic}"), &[])?;
    reader.read_to_end(&TopicPartition::new(topic, 0), None, &mut |m| {
        if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
            directory.apply(k, m.payload());
        }
        Ok(())
    })?;
    Ok(directory.live())
}

fn read_loop(directory: &Directory, topic: &str, clients: &Clients, stop: &AtomicBool) -> Result<(), RuntimeError> {
    let tuning = [("fetch.wait.max.ms", "100"), ("queued.max.messages.kbytes", "1024")];
    let reader = PartitionReader::new(clients, "read members", format!("millrace-members-{topic}"), &tuning)?;
    let tp = TopicPartition::new(topic, 0);
    let apply = |m: &BorrowedMessage<'_>| {
        if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
            directory.apply(k, m.payload());
            metrics::gauge!("millrace_members_live").set(directory.live().len() as f64);
        }
    };
    // The topic as far as it reached at start: then the directory is loaded.
    let read = reader.read_to_end(&tp, None, &mut |m| {
        apply(m);
        Ok(())
    })?;
    directory.mark_loaded();
    let mut next = read.last_offset.map_or(read.end, |o| (o + 1).max(read.end));
    let mut reader = reader;
    reader.assign(&[(tp.clone(), Some(next))])?;
    let mut heard = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if let Some(Followed::Record(m)) = reader.follow(Duration::from_millis(200)) {
            apply(&m);
            next = m.offset() + 1;
            heard = Instant::now();
        } else if heard.elapsed() >= SILENT_READER {
            // Our own publisher writes every HEARTBEAT, so a reader that hears nothing for
            // this long is stuck, not idle: after a broker restart librdkafka 2.12 can keep
            // a client without a connection to the leader for good (docs/operations.md).
            // Left alone, this instance would route by a directory that no longer moves.
            tracing::warn!(silent_s = heard.elapsed().as_secs(), "members reader heard nothing; a new one goes on from the last record");
            match PartitionReader::new(clients, "read members", format!("millrace-members-{topic}"), &tuning) {
                Ok(fresh) => {
                    fresh.assign(&[(tp.clone(), Some(next))])?;
                    reader = fresh;
                }
                Err(e) => tracing::warn!(error = %e, "no new members reader yet"),
            }
            heard = Instant::now();
        }
    }
    Ok(())
}

/// How long the members reader may hear nothing before it is taken for stuck: several of
/// this instance's own heartbeats.
const SILENT_READER: Duration = Duration::from_secs(HEARTBEAT.as_secs() * 5);

fn publish_loop(
    directory: &Directory,
    catalog: &Catalog,
    standbys: Option<StandbySet>,
    topic: &str,
    clients: &Clients,
    stop: &AtomicBool,
) -> Result<(), RuntimeError> {
    let kafka = |source| RuntimeError::Kafka { op: "publish members", topic: topic.to_string(), source };
    let producer = PolledProducer::create(clients.client().set("linger.ms", "0").set("enable.idempotence", "true"), DefaultProducerContext)
        .map_err(kafka)?;
    let me = &directory.me;
    type Claims = (BTreeMap<String, Vec<i32>>, BTreeMap<String, Vec<i32>>);
    let mut last: Option<(Claims, Instant)> = None;
    let send = |value: Option<&[u8]>| {
        let mut rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(me.instance.as_str());
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        if let Err((e, _)) = producer.send(rec) {
            tracing::warn!(error = %e, "cannot publish membership");
        }
    };
    // Nothing is published under our id before we know no live twin publishes under it.
    while !stop.load(Ordering::SeqCst) && !directory.checked.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    while !stop.load(Ordering::SeqCst) {
        // Only what is ready counts: a partition still restoring is not served yet.
        let stores = if catalog.is_ready() { catalog.owned() } else { BTreeMap::new() };
        let copies = standbys.as_ref().map(|f| f()).unwrap_or_default();
        let claims = (stores, copies);
        let due = match &last {
            None => true,
            Some((prev, at)) => *prev != claims || at.elapsed() >= HEARTBEAT,
        };
        if due {
            let m = Member {
                instance: me.instance.clone(),
                http: me.http.clone(),
                stores: claims.0.clone(),
                standbys: claims.1.clone(),
                heartbeat_ms: now_ms(),
                incarnation: directory.incarnation.clone(),
            };
            send(Some(&serde_json::to_vec(&m).expect("members serialize")));
            last = Some((claims, Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Leaving: nothing here any more, so nobody waits for this instance to go stale. A run
    // refused as a twin published nothing, and must not erase the live twin's entry.
    if directory.checked.load(Ordering::SeqCst) {
        send(None);
    }
    producer.flush(Duration::from_secs(5)).map_err(kafka)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, parts: &[i32], heartbeat_ms: i64) -> Vec<u8> {
        let m = Member {
            instance: id.into(),
            http: format!("{id}:80"),
            stores: [("s".to_string(), parts.to_vec())].into(),
            standbys: [("s".to_string(), vec![9])].into(),
            heartbeat_ms,
            incarnation: format!("{id}-1"),
        };
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn the_freshest_claim_wins_and_stale_or_departed_ones_count_for_nothing() {
        let d = Directory::new(Owner { instance: "a".into(), http: "a:80".into() }, Duration::from_secs(10));
        let now = now_ms();
        d.apply("a", Some(&member("a", &[0, 1], now - 1_000)));
        d.apply("b", Some(&member("b", &[1, 2], now)));
        d.apply("c", Some(&member("c", &[3], now - 60_000)));
        assert_eq!(d.owner("s", 0).map(|o| o.instance), Some("a".into()));
        assert_eq!(d.owner("s", 1).map(|o| o.http), Some("b:80".into()), "a handover seen half-way: the fresher claim");
        assert_eq!(d.owner("s", 3), None, "a stale claim (a killed instance) is no owner");
        assert_eq!(d.owner("other", 0), None);
        let table = d.table();
        assert_eq!(table["s"][&1].0.as_ref().map(|o| o.instance.as_str()), Some("b"));
        assert_eq!(table["s"][&9].1.len(), 2, "a and b keep copies of partition 9");
        d.apply("b", None);
        assert_eq!(d.owner("s", 2), None, "b left");
        assert_eq!(d.live().len(), 1);
    }

    /// Only a recent record from another address could be a live twin's.
    #[test]
    fn a_predecessor_at_this_runs_own_address_is_no_twin() {
        let now = now_ms();
        let starting = |http: &str, left: Option<Vec<u8>>| {
            let d = Directory::new(Owner { instance: "a".into(), http: http.into() }, Duration::from_secs(10));
            if let Some(record) = left {
                d.apply("a", Some(&record));
            }
            d.mark_loaded();
            d.possible_twin().is_some()
        };
        assert!(!starting("a:80", None), "nothing left under the id");
        assert!(!starting("a:80", Some(member("a", &[0], now - 1_000))), "a crash a moment ago, restarted on its address");
        assert!(starting("a:81", Some(member("a", &[0], now - 1_000))), "a recent record from elsewhere: wait and see");
        assert!(!starting("a:81", Some(member("a", &[0], now - 600_000))), "an old record is no twin");
    }

    /// A directory that has loaded a recent record of instance `a` from another address.
    fn with_recent_predecessor() -> Directory {
        let d = Directory::new(Owner { instance: "a".into(), http: "a:81".into() }, Duration::from_secs(10));
        d.apply("a", Some(&member("a", &[0], now_ms() - 1_000)));
        d.mark_loaded();
        d
    }

    fn answering(presence: Option<Presence>) -> impl FnOnce(&Member) -> mpsc::Receiver<Presence> {
        move |_| {
            let (tx, rx) = mpsc::channel();
            if let Some(p) = presence {
                tx.send(p).unwrap();
            } else {
                // An answer that never comes: the asking side keeps its sender.
                std::mem::forget(tx);
            }
            rx
        }
    }

    /// The predecessor's address decides at once when it can: nobody there (or another
    /// instance) starts this run without the heartbeat's wait, a live twin there refuses
    /// it. Without an answer the wait runs its course and, with no new heartbeat, passes.
    #[test]
    fn the_predecessors_address_ends_the_wait_early() {
        let wait = HEARTBEAT + Duration::from_secs(1);
        let started = Instant::now();
        let d = with_recent_predecessor();
        d.refuse_duplicate(Duration::from_secs(1), answering(Some(Presence::Gone))).expect("gone: starts");
        assert!(started.elapsed() < wait / 2, "gone ended the wait: {:?}", started.elapsed());
        assert!(d.checked.load(Ordering::SeqCst));

        let started = Instant::now();
        let d = with_recent_predecessor();
        let refused = d.refuse_duplicate(Duration::from_secs(1), answering(Some(Presence::Serving)));
        assert!(matches!(&refused, Err(RuntimeError::DuplicateInstance { http, .. }) if http == "a:80"), "{refused:?}");
        assert!(started.elapsed() < wait / 2, "a live twin is refused at once: {:?}", started.elapsed());
        assert!(!d.checked.load(Ordering::SeqCst), "a refused run publishes nothing");

        for answer in [Some(Presence::Unknown), None] {
            let started = Instant::now();
            let d = with_recent_predecessor();
            d.refuse_duplicate(Duration::from_secs(1), answering(answer)).expect("no heartbeat came: starts");
            assert!(started.elapsed() >= wait, "{answer:?}: waited the heartbeat out: {:?}", started.elapsed());
        }
    }
}
