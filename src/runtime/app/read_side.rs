//! The read side of an `App`: which projection each node runs, and the threads of the
//! projections and outbox relays, next to the processing threads. The engine knows
//! nothing of it; only `readside` names PostgreSQL.

use super::{App, Registry, RuntimeError, Topology};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

impl App {
    /// The read side: each projection and outbox relay on a thread of its own, ending the
    /// instance as a processing thread does when it fails for good.
    pub(super) fn spawn_read_side(&self, stop: Arc<AtomicBool>) -> Result<Vec<std::thread::JoinHandle<Result<(), RuntimeError>>>, RuntimeError> {
        let read_side = self.projections.len() + self.topology.outboxes.len();
        let Some(url) = self.config.postgres_url.as_deref().filter(|_| read_side > 0) else { return Ok(Vec::new()) };
        let pool = crate::readside::postgres::pool(url, read_side + 1)
            .map_err(|source| RuntimeError::ReadSide { node: self.projections.keys().chain(self.topology.outboxes.keys()).next().cloned().unwrap_or_default(), source })?;
        let runtime = tokio::runtime::Handle::current();
        let mut handles = Vec::new();
        for (node, projection) in &self.projections {
            let spec = &self.topology.projections[node];
            let runner = crate::readside::runner::ProjectionRunner {
                name: node.clone(),
                group: self.topology.projection_group(node),
                topics: spec.from.iter().map(|t| (t.name.clone(), t.codec)).collect(),
                projection: projection.clone(),
                db: Arc::new(crate::readside::postgres::ProjectionDb::new(pool.clone(), &self.topology.projection_group(node))),
                runtime: runtime.clone(),
                clients: self.config.kafka.clone(),
                dead_letter_topic: self.topology.dead_letter_topic(),
                commit_interval: Duration::from_millis(spec.commit_interval_ms),
                max_batch_records: spec.max_batch_records,
            };
            handles.push(self.read_side_thread("projection", node, stop.clone(), move |stop| runner.run(stop)));
        }
        for (node, spec) in &self.topology.outboxes {
            let relay = crate::readside::outbox::OutboxRelay {
                name: node.clone(),
                group: self.topology.outbox_group(node),
                positions_topic: self.topology.outbox_positions_topic(),
                spec: spec.clone(),
                db: Arc::new(crate::readside::postgres::OutboxDb::new(pool.clone(), &spec.table)),
                runtime: runtime.clone(),
                clients: self.config.kafka.clone(),
                dead_letter_topic: self.topology.dead_letter_topic(),
            };
            handles.push(self.read_side_thread("outbox", node, stop.clone(), move |stop| relay.run(stop)));
        }
        Ok(handles)
    }

    /// A read-side node on a thread of its own, ending the instance as a processing thread
    /// does when it fails for good (/health says why).
    fn read_side_thread(
        &self,
        kind: &str,
        node: &str,
        stop: Arc<AtomicBool>,
        run: impl FnOnce(&AtomicBool) -> Result<(), crate::readside::ReadSideError> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<(), RuntimeError>> {
        let (node, catalog) = (node.to_string(), self.catalog.clone());
        std::thread::Builder::new()
            .name(format!("millrace-{kind}-{node}"))
            .spawn(move || {
                let r = run(&stop).map_err(|source| RuntimeError::ReadSide { node: node.clone(), source });
                if let Err(e) = &r {
                    catalog.set_failed(format!("{e}"));
                }
                stop.store(true, Ordering::SeqCst);
                r
            })
            .expect("spawn read-side thread")
    }
}

/// Each projection node's projection: the registered one it names, or its mapping.
pub fn projections(topology: &Topology, registry: &Registry) -> Result<BTreeMap<String, Arc<dyn crate::readside::Projection>>, RuntimeError> {
    use crate::topology::ProjectionKind;
    topology
        .projections
        .iter()
        .map(|(node, p)| {
            let projection: Arc<dyn crate::readside::Projection> = match &p.kind {
                ProjectionKind::Mapped(m) => Arc::new(crate::readside::mapped::MappedProjection(m.clone())),
                ProjectionKind::Registered(name) => registry.projection(name).ok_or_else(|| RuntimeError::UnknownProjection {
                    node: node.clone(),
                    name: name.clone(),
                    known: registry.projection_names().map(str::to_string).collect(),
                })?,
            };
            Ok((node.clone(), projection))
        })
        .collect()
}
