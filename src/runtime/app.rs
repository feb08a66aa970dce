//! `App`: a topology, the registered aggregates and the resources they run with. The
//! library never reads argv or the environment; the binary (or a test) passes in the
//! broker address, the state directory, an HTTP listener and a shutdown signal.

use super::catalog::{Catalog, StoreView};
use super::engine::EngineSettings;
use super::route::{EventSource, Route, RouteStore};
use super::kafka_ports::KafkaChangelog;
use super::ports::{ChangelogReader, Sink, SinkFactory};
use crate::sink::SinkError;
use super::registry::Registry;
use super::topics;
use crate::topology::TopicNeed;
use super::RuntimeError;
use crate::codec::Format;
use crate::processor::{AggregateSettings, AwaitSettings, AWAITING_INDEX, JoinProcessor, Lookup, RekeyProcessor, TableProcessor, TableRenderer, TableSource, ValueRenderer};
use super::global::GlobalTable;
use crate::store::Indexer;
use crate::store::StoreResources;
use crate::topology::{JoinTable, Topology};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod read_side;
pub use read_side::projections;

/// Where and as whom an instance runs.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The bootstrap servers and the user's Kafka settings: every client is made from it.
    pub kafka: crate::kafka::Clients,
    /// Parent of every store directory of this instance.
    pub state_dir: PathBuf,
    /// Stable id of this instance: names its transactional id and static group membership.
    pub instance_id: String,
    /// The `host:port` other instances reach this one's query server at. None: the
    /// listen address (with the host name when it listens on every interface).
    pub advertised_http: Option<String>,
    /// TLS, tokens and limits of the query server.
    pub http: crate::query::HttpSecurity,
    /// PostgreSQL for the read side (`postgres://user:password@host:port/database`); a
    /// topology with projections does not start the read side without it.
    pub postgres_url: Option<String>,
    /// Which side of the topology this process runs.
    pub run: Run,
}

/// Which side of a topology a process runs: scale and restart them apart, or together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Run {
    /// Everything the topology declares.
    #[default]
    All,
    /// Aggregates, tables, re-keys, joins and global tables; no projections.
    Processing,
    /// Projections only: no processing thread joins the application's group.
    ReadSide,
}

pub struct App {
    topology: Topology,
    config: AppConfig,
    routes: BTreeMap<String, Route>,
    catalog: Arc<Catalog>,
    globals: BTreeMap<String, Arc<GlobalTable>>,
    /// The writers' event-time claims, read by the global tables of aggregates' events.
    board: Arc<super::progress::ProgressBoard>,
    /// Each aggregate node's command check, for the gateway.
    checks: BTreeMap<String, super::registry::CommandCheck>,
    /// The projections this process runs, by node.
    projections: BTreeMap<String, Arc<dyn crate::readside::Projection>>,
}

impl App {
    /// Checks the topology against what this binary registered.
    pub fn new(topology: Topology, registry: &Registry, config: AppConfig) -> Result<Self, RuntimeError> {
        let mut topology = topology;
        match config.run {
            Run::All => {}
            Run::Processing => {
                topology.projections.clear();
                topology.outboxes.clear();
            }
            Run::ReadSide => {
                topology.aggregates.clear();
                topology.tables.clear();
                topology.rekeys.clear();
                topology.joins.clear();
                topology.global_tables.clear();
            }
        }
        let projections = projections(&topology, registry)?;
        if (!projections.is_empty() || !topology.outboxes.is_empty()) && config.postgres_url.is_none() {
            let nodes: Vec<String> = projections.keys().chain(topology.outboxes.keys()).cloned().collect();
            return Err(RuntimeError::NoPostgres { nodes: nodes.join(", ") });
        }
        if let Some(url) = config.postgres_url.as_deref().filter(|_| !projections.is_empty() || !topology.outboxes.is_empty()) {
            crate::readside::postgres::check_url(url).map_err(|source| RuntimeError::ReadSide { node: "--postgres-url".into(), source })?;
        }
        let mut routes = BTreeMap::new();
        let catalog = Catalog::new();
        let mut globals = BTreeMap::new();
        let mut checks = BTreeMap::new();
        let board = super::progress::ProgressBoard::new();
        let writers = topology.progress_writers();
        let lateness = topology.processing.max_task_idle_ms;
        for (node, g) in &topology.global_tables {
            globals.entry(node.clone()).or_insert_with(|| {
                catalog.define(&g.store.name, StoreView {
                    partitions: g.topic.partitions,
                    renderer: Arc::new(TableRenderer { format: g.topic.codec }),
                    indexes: Vec::new(),
                    global: true,
                });
                let table = GlobalTable::new(node, &g.topic.name, &g.store.name, g.topic.partitions, g.store.spec.history_ms).with_lateness(lateness);
                Arc::new(match writers.get(&g.topic.name) {
                    Some(a) => table.written_by(board.clone(), &a.commands.name, a.commands.partitions),
                    None => table,
                })
            });
        }
        for (node, a) in &topology.aggregates {
            let registered = registry.get(&a.aggregate).ok_or_else(|| RuntimeError::UnknownAggregate {
                node: node.clone(),
                name: a.aggregate.clone(),
                known: registry.names().map(str::to_string).collect(),
            })?;
            let store_format = registry.store_format(a).expect("the aggregate is registered");
            let settings = AggregateSettings {
                store: a.store.name.clone(),
                command_format: a.commands.codec,
                event_format: a.events.codec,
                reply_format: a.replies.codec,
                store_format,
                events_topic: a.events.name.clone(),
                reply_topic: a.replies.name.clone(),
                dead_letter_topic: topology.dead_letter_topic(),
                dedup_window: a.dedup_window,
                event_history: a.event_history,
                quarantine: catalog.quarantine(),
                awaits: a.awaits.as_ref().map(|aw| AwaitSettings {
                    table_name: aw.table.clone(),
                    table: globals[&aw.table].clone() as Arc<dyn Lookup>,
                    timeout_ms: aw.timeout_ms as i64,
                }),
            };
            if !registered.supports_protobuf {
                for t in [&a.commands, &a.events, &a.replies] {
                    if t.codec == Format::Protobuf {
                        return Err(RuntimeError::NoProtobuf { name: a.aggregate.clone(), topic: t.name.clone() });
                    }
                }
                if store_format == Format::Protobuf {
                    return Err(RuntimeError::NoProtobuf { name: a.aggregate.clone(), topic: a.store.changelog.clone() });
                }
            }
            catalog.define(&a.store.name, StoreView {
                partitions: a.commands.partitions,
                renderer: (registered.renderer)(store_format),
                indexes: a.store.spec.indexes.iter().cloned()
                    .chain(a.awaits.as_ref().map(|_| AWAITING_INDEX.to_string()))
                    .collect(),
                global: false,
            });
            checks.insert(node.clone(), registered.check.clone());
            catalog.define_aggregate(&a.aggregate, &a.store.name);
            catalog.define_aggregate(node, &a.store.name);
            let make = registered.processor.clone();
            let renderer = (registered.renderer)(store_format);
            routes.insert(a.commands.name.clone(), Route {
                processor: Arc::new(move || make(settings.clone())),
                state: Some(RouteStore {
                    name: a.store.name.clone(),
                    changelog: a.store.changelog.clone(),
                    accept: Arc::new(|_| true),
                    indexer: indexer(&a.store.spec.indexes, renderer, a.awaits.is_some()),
                    history_ms: None,
                    events: a.event_history.then(|| EventSource {
                        topic: a.events.name.clone(),
                        partitions: a.events.partitions,
                        input_partitions: a.commands.partitions,
                        json: a.events.codec == Format::Json,
                    }),
                }),
                peers: Vec::new(),
            });
        }
        for t in topology.tables.values() {
            let format = t.topic.codec;
            let renderer: Arc<dyn ValueRenderer> = Arc::new(TableRenderer { format });
            catalog.define(&t.store.name, StoreView {
                partitions: t.topic.partitions,
                renderer: renderer.clone(),
                indexes: t.store.spec.indexes.clone(),
                global: false,
            });
            let dead_letter_topic = topology.dead_letter_topic();
            routes.insert(t.topic.name.clone(), Route {
                processor: Arc::new(move || {
                    Box::new(TableProcessor { format, dead_letter_topic: dead_letter_topic.clone() })
                }),
                state: Some(RouteStore {
                    name: t.store.name.clone(),
                    changelog: t.store.changelog.clone(),
                    accept: Arc::new(move |v| TableProcessor::accepts(format, v)),
                    indexer: indexer(&t.store.spec.indexes, renderer, false),
                    events: None,
                    // A join reads it as of each stream record's time.
                    history_ms: t.joined.then_some(t.store.spec.history_ms),
                }),
                peers: Vec::new(),
            });
        }
        for r in topology.rekeys.values() {
            let (key_field, repartition_topic, dead_letter_topic) =
                (r.key_field.clone(), r.repartition.name.clone(), topology.dead_letter_topic());
            routes.insert(r.from.name.clone(), Route {
                processor: Arc::new(move || {
                    Box::new(RekeyProcessor {
                        key_field: key_field.clone(),
                        repartition_topic: repartition_topic.clone(),
                        dead_letter_topic: dead_letter_topic.clone(),
                    })
                }),
                state: None,
                peers: Vec::new(),
            });
        }
        for j in topology.joins.values() {
            let (source, peers) = match &j.table {
                JoinTable::Global { node, key_field, .. } => (
                    TableSource::Global { table: globals[node].clone() as Arc<dyn Lookup>, key_field: key_field.clone() },
                    vec![],
                ),
                JoinTable::Table { store, .. } => (TableSource::Peer(store.clone()), vec![store.clone()]),
            };
            let (kind, output_topic, dead_letter_topic) = (j.kind, j.output.name.clone(), topology.dead_letter_topic());
            routes.insert(j.stream_topic.clone(), Route {
                processor: Arc::new(move || {
                    Box::new(JoinProcessor {
                        table: source.clone(),
                        kind,
                        output_topic: output_topic.clone(),
                        dead_letter_topic: dead_letter_topic.clone(),
                    })
                }),
                state: None,
                peers,
            });
        }
        Ok(Self { topology, config, routes, catalog, globals, board, checks, projections })
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Topics to read in time order against each other: each co-partitioned join's table
    /// topic (first: it wins ties) and stream topic.
    fn sync_groups(&self) -> Vec<Vec<String>> {
        self.topology
            .joins
            .values()
            .filter_map(|j| match &j.table {
                JoinTable::Table { topic, .. } => Some(vec![topic.clone(), j.stream_topic.clone()]),
                JoinTable::Global { .. } => None,
            })
            .collect()
    }

    /// Stream topics of joins with a global table, with the table.
    fn gates(&self) -> std::collections::HashMap<String, Arc<dyn Lookup>> {
        self.topology
            .joins
            .values()
            .filter_map(|j| match &j.table {
                JoinTable::Global { node, .. } => Some((j.stream_topic.clone(), self.globals[node].clone() as Arc<dyn Lookup>)),
                JoinTable::Table { .. } => None,
            })
            .collect()
    }

    /// What this application's tasks publish of their event-time progress.
    fn progress_settings(&self) -> Option<super::progress::ProgressSettings> {
        let writers = self.topology.progress_writers();
        (!writers.is_empty()).then(|| super::progress::ProgressSettings {
            topic: self.topology.progress_topic(),
            writers: writers.values().map(|a| (a.commands.name.clone(), (a.events.name.clone(), a.events.partitions))).collect(),
        })
    }

    /// The global tables, by node name.
    pub fn globals(&self) -> &BTreeMap<String, Arc<GlobalTable>> {
        &self.globals
    }

    /// What the command gateway can send to: every aggregate, by aggregate name and by
    /// node name.
    pub fn gateway_targets(&self) -> BTreeMap<String, super::gateway::GatewayTarget> {
        let mut targets = BTreeMap::new();
        for (node, a) in &self.topology.aggregates {
            let Some(check) = self.checks.get(node) else { continue };
            let target = super::gateway::GatewayTarget {
                commands: a.commands.name.clone(),
                command_format: a.commands.codec,
                replies: a.replies.name.clone(),
                reply_format: a.replies.codec,
                reply_partitions: a.replies.partitions,
                check: check.clone(),
            };
            targets.insert(a.aggregate.clone(), target.clone());
            targets.insert(node.clone(), target);
        }
        targets
    }

    /// What processing thread `thread`'s engine runs with (the broker-free driver's too).
    pub(crate) fn engine_settings(&self, thread: usize, standbys: Option<Arc<super::standby::Standbys>>) -> EngineSettings {
        EngineSettings {
            state_dir: self.config.state_dir.join(&self.topology.application_id),
            commit_interval: Duration::from_millis(self.topology.processing.commit_interval_ms),
            min_commit_interval: Duration::from_millis(
                self.topology.processing.min_commit_interval_ms.unwrap_or(self.topology.processing.commit_interval_ms),
            ),
            max_batch_records: self.topology.processing.max_batch_records.max(1),
            routes: self.routes.clone(),
            known_topics: self.topic_needs().into_iter().map(|t| t.name).collect(),
            dead_letter_topic: self.topology.dead_letter_topic(),
            thread,
            sync_groups: self.sync_groups(),
            max_task_idle: Duration::from_millis(self.topology.processing.max_task_idle_ms),
            gates: self.gates(),
            progress: self.progress_settings(),
            clock: wall_clock_ms,
            end_check: (Duration::from_millis(self.topology.processing.commit_interval_ms) / 2).max(Duration::from_millis(10)),
            standbys,
            task_timeout: Duration::from_millis(self.topology.processing.task_timeout_ms),
        }
    }

    /// The transactional id (and static member id) of processing thread `thread`.
    pub(crate) fn member_id(&self, thread: usize) -> String {
        if self.topology.processing.threads.max(1) == 1 {
            format!("{}-{}", self.topology.application_id, self.config.instance_id)
        } else {
            format!("{}-{}-{thread}", self.topology.application_id, self.config.instance_id)
        }
    }

    /// Every partition a processing thread's transactions write as a rule: the aggregates'
    /// events and replies, the stores' changelogs and the dead-letter topic. A new producer
    /// releases them (`TransactionalSink::release_offsets`). Repartition topics are left
    /// out: they are inputs too, and a released partition's consumer lag would show the
    /// aborted record and its marker until the next record comes.
    fn written_partitions(&self) -> Vec<crate::record::TopicPartition> {
        let mut topics: BTreeMap<String, i32> = BTreeMap::new();
        for a in self.topology.aggregates.values() {
            topics.insert(a.events.name.clone(), a.events.partitions);
            topics.insert(a.replies.name.clone(), a.replies.partitions);
        }
        for n in self.topic_needs() {
            use crate::topology::TopicRole;
            if matches!(n.role, TopicRole::Changelog | TopicRole::DeadLetters) || n.name == self.topology.dead_letter_topic() {
                topics.insert(n.name, n.partitions);
            }
        }
        topics.into_iter().flat_map(|(t, n)| (0..n).map(move |p| crate::record::TopicPartition::new(t.clone(), p))).collect()
    }

    /// Every topic this application needs, internal ones included.
    pub fn topic_needs(&self) -> Vec<TopicNeed> {
        self.topology.topic_needs()
    }

    /// Runs until `shutdown` resolves: creates missing topics, joins the group, processes,
    /// and serves queries on `listener`. On shutdown it commits or aborts, flushes and
    /// closes every store.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        metrics: Option<PrometheusHandle>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RuntimeError> {
        let needs = self.topic_needs();
        let clients = self.config.kafka.clone();
        tokio::task::spawn_blocking(move || topics::ensure(&clients, &needs))
            .await
            .expect("topic check does not panic")?;

        let stop = Arc::new(AtomicBool::new(false));
        // No route, no processing thread (a read-side process): nothing to join the group for.
        let threads = if self.routes.is_empty() { 0 } else { self.topology.processing.threads.max(1) };
        self.catalog.expect_threads(threads);
        if threads == 0 {
            self.catalog.set_ready(0, true);
        }
        let resources = StoreResources::new(&self.topology.rocksdb);
        // Global tables load to their end before any input is processed, then follow.
        let mut followers = Vec::new();
        if !self.topology.progress_writers().is_empty() {
            followers.push(self.board.clone().follow(self.config.kafka.clone(), self.topology.progress_topic(), stop.clone()));
        }
        for g in self.globals.values() {
            let (g, dir, partitions, res, clients) = (
                g.clone(),
                self.config.state_dir.join(&self.topology.application_id).join("global"),
                g.partitions,
                resources.clone(),
                self.config.kafka.clone(),
            );
            let catalog = self.catalog.clone();
            let g = tokio::task::spawn_blocking(move || {
                for s in g.open(&dir, partitions, &res)? {
                    catalog.attach(&s);
                }
                let n = g.bootstrap(&clients)?;
                tracing::info!(table = %g.name, records = n, "global table bootstrapped");
                Ok::<_, RuntimeError>(g)
            })
            .await
            .expect("global bootstrap does not panic")?;
            followers.push(g.follow(self.config.kafka.clone(), stop.clone()));
        }
        // Any instance answers any key: publish what this one holds, learn what the others do.
        let local = listener.local_addr().map_err(RuntimeError::Http)?;
        let me = super::Owner {
            instance: self.config.instance_id.clone(),
            http: self.config.advertised_http.clone().unwrap_or_else(|| advertised(local)),
        };
        let directory = Arc::new(super::Directory::new(me, super::members::HEARTBEAT * 3));
        // Standby replicas: warm copies of the stores this instance would take over.
        let standbys = (self.topology.processing.standby_replicas > 0).then(|| {
            let stores = self
                .routes
                .iter()
                .filter_map(|(input, r)| {
                    let st = r.state.as_ref()?;
                    // A table whose input is its changelog restores from the input itself.
                    (!st.source_is_changelog(input)).then(|| super::standby::StandbyStore {
                        name: st.name.clone(),
                        changelog: st.changelog.clone(),
                        partitions: self.topology.topics.get(input).map_or(1, |t| t.partitions),
                        indexer: st.indexer.clone(),
                        history_ms: st.history_ms,
                    })
                })
                .collect();
            let s = Arc::new(super::standby::Standbys::new(
                stores,
                self.topology.processing.standby_replicas,
                self.config.state_dir.join(&self.topology.application_id),
                resources.clone(),
                directory.clone(),
                self.catalog.clone(),
            ));
            followers.push(s.clone().spawn(self.config.kafka.clone(), stop.clone()));
            s
        });
        let standby_set: Option<super::members::StandbySet> =
            standbys.clone().map(|s| Arc::new(move || s.held()) as super::members::StandbySet);
        followers.extend(super::members::spawn(
            directory.clone(),
            self.catalog.clone(),
            standby_set,
            self.topology.members_topic(),
            self.config.kafka.clone(),
            stop.clone(),
        ));
        // Before joining the group: a live twin with our instance id would be fenced by us,
        // and fence us back, for as long as both run.
        let check = directory.clone();
        let ask = {
            let (runtime, me) = (tokio::runtime::Handle::current(), directory.clone());
            let tls = self.config.http.tls.as_ref().map(|t| t.connector.clone());
            move |predecessor: &super::members::Member| {
                let (tx, rx) = std::sync::mpsc::channel();
                let predecessor = predecessor.clone();
                runtime.spawn(async move {
                    let p = super::predecessor::presence(&predecessor, &me.me.instance, &me.incarnation, tls.as_ref()).await;
                    let _ = tx.send(p);
                });
                rx
            }
        };
        let checked = tokio::task::spawn_blocking(move || check.refuse_duplicate(Duration::from_secs(30), ask))
            .await
            .expect("the duplicate check does not panic");
        if let Err(e) = checked {
            stop.store(true, Ordering::SeqCst);
            tokio::task::spawn_blocking(move || followers.into_iter().for_each(|f| drop(f.join())))
                .await
                .expect("join does not panic");
            return Err(e);
        }
        let mut processing = Vec::with_capacity(threads);
        for thread in 0..threads {
            // One member id per thread: `<app>-<instance>` alone, `<app>-<instance>-<n>` for more.
            let member = self.member_id(thread);
            let settings = self.engine_settings(thread, standbys.clone());
            let consumer_cfg = self.consumer_config(&member);
            // Past the group's session timeout, a member held up in one call may have lost
            // its partitions without knowing: the query server stops answering from them.
            let session_ms = consumer_cfg.get("session.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(45_000);
            self.catalog.set_stall_limit(Duration::from_millis(session_ms));
            // The ports over Kafka: under exactly-once, two transactional producers per
            // thread taking turns (`alternating_sink`), each id fencing its own older
            // incarnation; restores through the client factory.
            let (clients, exactly_once) = (self.config.kafka.clone(), self.topology.processing.exactly_once);
            let written = self.written_partitions();
            // Once the instance stops, a failed transaction's producer is not replaced
            // (`SinkError::ShuttingDown`).
            let stopping = stop.clone();
            let new_sink: SinkFactory = Box::new(move || {
                // At-least-once producers start without a broker round trip, and the
                // rewind after a failed batch needs one before the shutdown commits again.
                if exactly_once && stopping.load(Ordering::SeqCst) {
                    return Err(crate::sink::SinkError::ShuttingDown);
                }
                new_thread_sink(&clients, &member, exactly_once, &written)
            });
            let reader: Arc<dyn ChangelogReader> = Arc::new(KafkaChangelog { clients: self.config.kafka.clone(), stop: stop.clone() });
            // Offset lookups of this thread's engine, on a connection of their own.
            let offsets = Arc::new(super::reader::PartitionReader::new(&self.config.kafka, "end offsets", format!("{}-offsets", self.member_id(thread)), &[])?);
            let (resources, catalog, stop) = (resources.clone(), self.catalog.clone(), stop.clone());
            processing.push(
                std::thread::Builder::new()
                    .name(format!("millrace-processing-{thread}"))
                    .spawn(move || {
                        // Every log line of this thread names it (a field of JSON logs).
                        let _span = tracing::info_span!("processing", thread).entered();
                        let r = super::poll_loop::poll_loop(consumer_cfg, settings, resources, catalog.clone(), (new_sink, reader, offsets), stop.clone());
                        // Refused a new producer while stopping: before its first one (nothing
                        // processed), or after the last transaction failed, which the next
                        // start aborts. Neither is this thread's failure.
                        let r = match r {
                            Err(e @ RuntimeError::Sink(crate::sink::SinkError::ShuttingDown)) => {
                                tracing::warn!(error = %e, "stopped without committing the open transaction, if any");
                                Ok(())
                            }
                            r => r,
                        };
                        if let Err(e) = &r {
                            // /health says so (503) while the instance shuts down.
                            tracing::error!(thread, error = %e, "processing thread failed; the instance stops");
                            catalog.set_failed(format!("processing thread {thread} failed: {e}"));
                        }
                        // One thread failing stops the instance: its partitions would stall.
                        stop.store(true, Ordering::SeqCst);
                        r
                    })
                    .expect("spawn processing thread"),
            );
        }

        // The read side (`app/read_side.rs`).
        processing.extend(self.spawn_read_side(stop.clone())?);

        let targets = self.gateway_targets();
        let gateway = if targets.is_empty() {
            None
        } else {
            let g = Arc::new(super::gateway::Gateway::new(targets, &self.config.kafka, &self.config.instance_id)?);
            let (g2, clients, stop2) = (g.clone(), self.config.kafka.clone(), stop.clone());
            followers.push(
                tokio::task::spawn_blocking(move || g2.spawn_reader(&clients, stop2))
                    .await
                    .expect("gateway start does not panic")?,
            );
            Some(g)
        };
        let console = crate::query::console::Console { topology: Arc::new(self.topology.clone()), clients: self.config.kafka.clone() };
        let router = crate::query::router(self.catalog.clone(), metrics, Some(directory), gateway, self.config.http.clone(), Some(console));
        let stop_http = stop.clone();
        let shutdown = async move {
            shutdown.await;
            stop_http.store(true, Ordering::SeqCst);
        };
        let server: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = match &self.config.http.tls {
            Some(tls) => Box::pin(crate::query::tls::serve(listener, router, tls.acceptor.clone(), shutdown)),
            None => {
                // Answers go out at once, not held back by Nagle's algorithm until the
                // client acknowledges the previous one (a delayed ACK can take 40 ms).
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
                    let _ = tcp.set_nodelay(true);
                });
                Box::pin(axum::serve(listener, router).with_graceful_shutdown(shutdown).into_future())
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stop_watch = stop.clone();
        let watcher = std::thread::spawn(move || {
            let mut result = Ok(());
            for handle in processing {
                let r = handle.join().expect("processing thread does not panic");
                if result.is_ok() {
                    result = r;
                }
                // The first thread to end (failure or shutdown) ends them all.
                stop_watch.store(true, Ordering::SeqCst);
            }
            if result.is_err() {
                // A failing instance says so before it goes: probes and load balancers see
                // /health 503 with the reason, not just a refused connection.
                std::thread::sleep(FAILED_GRACE);
            }
            let _ = tx.send(());
            result
        });
        // Serve until shutdown, or stop serving when processing failed by itself.
        tokio::select! {
            r = server => r.map_err(RuntimeError::Http)?,
            _ = rx => {}
        }
        stop.store(true, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            for f in followers {
                let _ = f.join();
            }
            watcher.join().expect("watcher does not panic")
        })
        .await
        .expect("join does not panic")
    }

    fn consumer_config(&self, member: &str) -> ClientConfig {
        let mut cfg = self.config.kafka.client();
        cfg.set("group.id", &self.topology.application_id)
            // Static membership: a restarted instance takes its partitions back without a
            // rebalance, and a zombie with the same id is fenced.
            .set("group.instance.id", member)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // Equal partition numbers of every subscribed topic on one member: the base of
            // co-partitioning (ARCHITECTURE.md, invariant 4).
            .set("partition.assignment.strategy", "range")
            .set("statistics.interval.ms", "5000")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            // Prefetch: librdkafka's default holds up to 64 MiB of input ahead of the
            // processor, more than the rest of the process together. A smaller queue
            // refilled at once (instead of after the default 1 s pause once it ran over)
            // keeps the processor fed: `deploy/bench 300000` ran as fast with 8 MiB, at a
            // peak RSS of 173 MiB instead of 238 (4 MiB: 164 MiB, a little slower).
            // Settings given with --kafka-config come after these.
            .set("queued.max.messages.kbytes", "8192")
            .set("fetch.queue.backoff.ms", "10");
        self.config.kafka.apply_consumer(&mut cfg);
        cfg
    }
}

/// Indexes read their fields from the value as the query server renders it: the `state`
/// of a snapshot, or the `value` of a table entry.
/// The store's secondary indexes: the declared fields of the state, plus, for an
/// aggregate that can wait, `millrace.awaiting` (how its waiting aggregates are found).
fn indexer(fields: &[String], renderer: Arc<dyn ValueRenderer>, awaiting: bool) -> Option<Indexer> {
    if fields.is_empty() && !awaiting {
        return None;
    }
    let mut names = fields.to_vec();
    if awaiting {
        names.push(AWAITING_INDEX.to_string());
    }
    let wanted = fields.to_vec();
    Some(Indexer {
        names,
        extract: Arc::new(move |bytes| {
            let Ok(found) = renderer.index_fields(bytes, &wanted) else { return Vec::new() };
            let mut keys = found.fields;
            if awaiting && found.awaiting {
                keys.push((AWAITING_INDEX.to_string(), "yes".to_string()));
            }
            keys
        }),
    })
}

/// Wall-clock milliseconds since the epoch.
pub(crate) fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// How long /health answers 503 after a processing thread died, before the process exits.
const FAILED_GRACE: Duration = Duration::from_secs(2);

/// The address other instances use when none is configured: the listen address, with
/// this machine's host name in place of an unspecified IP (`0.0.0.0`).
fn advertised(local: std::net::SocketAddr) -> String {
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", local.port())
}

/// A processing thread's sink. Under exactly-once: a pair of transactional producers,
/// `member` (the id of every earlier version, so an upgrade aborts what it left open) and
/// `<member>-alternate`, initialised side by side (each `init_transactions` is a round
/// trip to its coordinator, and restarts wait for them). At-least-once has no transactions
/// to alternate: one idempotent producer.
fn new_thread_sink(clients: &crate::kafka::Clients, member: &str, exactly_once: bool, written: &[crate::record::TopicPartition]) -> Result<Box<dyn Sink>, SinkError> {
    use crate::sink::TransactionalSink;
    if !exactly_once {
        return Ok(Box::new(TransactionalSink::new(clients, member, false, None)?));
    }
    let alternate = format!("{member}-alternate");
    let writes = written.first().map(|tp| tp.topic.as_str());
    let sink = |id: &str| TransactionalSink::new(clients, id, true, writes).map(|s| s.releasing(written.to_vec()));
    let (first, second) = std::thread::scope(|s| {
        let second = s.spawn(|| sink(&alternate));
        let first = sink(member);
        (first, second.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    Ok(Box::new(super::alternating_sink::AlternatingSink::new(Box::new(first?), Box::new(second?))))
}
