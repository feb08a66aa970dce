//! Routes: what the records of each input topic lead to. A fresh processor per task, the
//! store its tasks write (and the topic it restores from), and the stores of other nodes
//! it reads. Built by `App::new` from the topology; the engine opens tasks from them.

use super::task::Task;
use crate::error::Recovery;
use crate::processor::Processor;
use crate::record::TopicPartition;
use crate::store::{ChangeloggedStore, Indexer, RocksStore, StoreError, StoreResources};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the records of one input topic are processed: a fresh processor per task, the
/// store its tasks write (if any), and the peer stores it reads.
#[derive(Clone)]
pub(crate) struct Route {
    pub processor: Arc<dyn Fn() -> Box<dyn Processor> + Send + Sync>,
    pub state: Option<RouteStore>,
    /// Stores of other nodes this node reads, from the task of the same partition.
    pub peers: Vec<String>,
}

/// The store of a route's tasks.
#[derive(Clone)]
pub(crate) struct RouteStore {
    pub name: String,
    /// The topic the store restores from: its own changelog, or (a table without one)
    /// the input topic itself.
    pub changelog: String,
    /// Which restored records to apply. An input topic serving as changelog may hold
    /// records the processor dead-lettered.
    pub accept: Arc<dyn Fn(Option<&[u8]>) -> bool + Send + Sync>,
    /// The store's secondary indexes, if it declares any.
    pub indexer: Option<Indexer>,
    /// Keep values with their time (a table a join reads as of the stream record's time),
    /// for this much event time behind each key's newest value. None: not versioned.
    pub history_ms: Option<u64>,
    /// An aggregate store keeping its event history: where to rebuild it from if lost.
    pub events: Option<EventSource>,
}

/// The events topic an aggregate's event history is rebuilt from.
#[derive(Clone, Debug)]
pub(crate) struct EventSource {
    pub topic: String,
    pub partitions: i32,
    /// Partitions of the command topic: which events belong to a task.
    pub input_partitions: i32,
    /// Only JSON events can be rebuilt into the (JSON) history.
    pub json: bool,
}

impl RouteStore {
    /// The input topic is the changelog: no changelog records are written, and the
    /// checkpoint is the last input offset the store applied.
    pub fn source_is_changelog(&self, input: &str) -> bool {
        self.changelog == input
    }

    /// The store a task of `input` writes through.
    pub fn wrap(&self, rocks: Arc<RocksStore>, input: &str) -> ChangeloggedStore {
        let store = if self.source_is_changelog(input) {
            ChangeloggedStore::without_changelog(rocks)
        } else {
            ChangeloggedStore::new(rocks, self.changelog.as_str())
        };
        if self.history_ms.is_some() {
            store.versioned()
        } else {
            store
        }
    }
}

/// For an aggregate keeping its event history: the events topic offsets this transaction
/// reached, per partition. Every event of the task up to them is in the committed history.
pub(crate) fn events_offsets<'a>(route: &Route, delivered: impl IntoIterator<Item = (&'a TopicPartition, &'a i64)>) -> Vec<(i32, i64)> {
    let Some(ev) = route.state.as_ref().and_then(|st| st.events.as_ref()) else { return Vec::new() };
    delivered.into_iter().filter(|(tp, _)| tp.topic == ev.topic).map(|(tp, o)| (tp.partition, *o)).collect()
}

/// The stores a task of `tp` may read besides its own: those its route names as peers,
/// from the other tasks of the same partition (a join's table, overlay included).
pub(crate) fn peer_stores<'a>(
    routes: &'a BTreeMap<String, Route>,
    tasks: &'a BTreeMap<TopicPartition, Task>,
    tp: &TopicPartition,
) -> Vec<(&'a str, &'a ChangeloggedStore)> {
    let wanted = &routes[&tp.topic].peers;
    tasks
        .iter()
        .filter(|(other, _)| other.partition == tp.partition && *other != tp)
        .filter_map(|(other, t)| {
            let name = routes[&other.topic].state.as_ref()?.name.as_str();
            wanted.iter().any(|p| p == name).then_some((name, t.store()?))
        })
        .collect()
}

/// Opens a store, waiting a little if its previous owner in this process (a just-closed
/// task, a query in flight) still holds the RocksDB lock.
pub(crate) fn open_store(dir: &std::path::Path, st: &RouteStore, partition: i32, res: &StoreResources) -> Result<RocksStore, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RocksStore::open(dir, &st.name, partition, res, st.indexer.clone()) {
            Ok(s) => return Ok(s.keep_history(st.history_ms)),
            Err(e) if e.recovery() == Recovery::Retry && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}
