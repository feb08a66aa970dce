//! Blue/green rebuild of a projection (`millrace projection rebuild`): its tables built
//! again from offset 0 into shadow tables while the live ones keep serving, then swapped in
//! one transaction once the shadows have caught up.
//!
//! Why nothing is lost or doubled at the swap: the swap takes the live projection's
//! position rows first (its writer's batch in flight commits before), sets them to the
//! shadow's positions, and renames the tables, all in one transaction. The live writer's
//! next batch finds its positions moved, rolls back, and its consumer rejoins from the
//! shadow's positions, writing into the table that is now live. The rows and the positions
//! of that table therefore agree, as they did for the old one.
//!
//! An interrupted rebuild resumes: the shadow tables and their positions (stored under
//! `<projection>~rebuild`) are kept until the swap.

use super::batch::BatchWriter;
use super::postgres::ProjectionDb;
use super::projection::{ProjectedEvent, Projection, RowChange, TableDef};
use super::ReadSideError;
use crate::codec::Format;
use crate::kafka::Clients;
use crate::record::TopicPartition;
use crate::runtime::reader::{in_record, Followed, PartitionReader};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How far a rebuild is, for its progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Records read so far (from where this run started).
    pub done: u64,
    /// Records between where this run started and the current end.
    pub total: u64,
    pub elapsed: Duration,
}

/// What a rebuild did.
#[derive(Debug)]
pub struct Rebuilt {
    pub records: u64,
    /// (live table, the old table it replaced, kept unless dropped).
    pub tables: Vec<(String, String)>,
    pub dropped_old: bool,
}

pub struct Rebuild {
    /// The live projection's name in `millrace_offsets` (its group).
    pub live: String,
    pub topics: Vec<(String, Format)>,
    pub projection: Arc<dyn Projection>,
    pub pool: deadpool_postgres::Pool,
    pub clients: Clients,
    pub dead_letter_topic: String,
    pub drop_old: bool,
}

/// A projection writing into the shadow tables instead of the live ones.
struct Redirected {
    inner: Arc<dyn Projection>,
    to: HashMap<String, String>,
}

impl Projection for Redirected {
    fn project(&self, event: &ProjectedEvent<'_>) -> Result<Vec<RowChange>, String> {
        let mut changes = self.inner.project(event)?;
        for change in &mut changes {
            let (RowChange::Upsert { table, .. } | RowChange::Delete { table, .. }) = change;
            match self.to.get(table.as_str()) {
                Some(shadow) => *table = shadow.clone(),
                None => return Err(format!("the projection wrote table {table}, which its tables() do not declare; a rebuild cannot redirect it")),
            }
        }
        Ok(changes)
    }
}

/// `schema.table` with a suffix on the table part.
fn suffixed(table: &str, suffix: &str) -> String {
    format!("{table}{suffix}")
}

impl Rebuild {
    /// The rebuild of projection `node` of `topology`.
    pub fn of(
        topology: &crate::topology::Topology,
        node: &str,
        registry: &crate::runtime::Registry,
        clients: Clients,
        postgres_url: &str,
        drop_old: bool,
    ) -> Result<Self, ReadSideError> {
        let spec = topology.projections.get(node).ok_or_else(|| ReadSideError::Rebuild {
            reason: format!("the topology has no projection {node:?}; it has {:?}", topology.projections.keys().collect::<Vec<_>>()),
        })?;
        let projection = crate::runtime::projections(topology, registry)
            .map_err(|e| ReadSideError::Rebuild { reason: e.to_string() })?
            .remove(node)
            .expect("every projection node has a projection");
        Ok(Rebuild {
            live: topology.projection_group(node),
            topics: spec.from.iter().map(|t| (t.name.clone(), t.codec)).collect(),
            projection,
            pool: super::postgres::pool(postgres_url, 2)?,
            clients,
            dead_letter_topic: topology.dead_letter_topic(),
            drop_old,
        })
    }

    pub fn run(&self, runtime: &tokio::runtime::Handle, on_progress: &mut dyn FnMut(Progress)) -> Result<Rebuilt, ReadSideError> {
        let tables: Vec<TableDef> = self.projection.tables();
        if tables.is_empty() {
            return Err(ReadSideError::Rebuild { reason: "the projection declares no tables (Projection::tables), so there is nothing to rebuild".into() });
        }
        let db = Arc::new(ProjectionDb::new(self.pool.clone(), &format!("{}~rebuild", self.live)));
        let renames: Vec<(String, String, String)> =
            tables.iter().map(|t| (t.name.clone(), suffixed(&t.name, "_rebuild"), suffixed(&t.name, "_old"))).collect();
        runtime.block_on(async {
            db.prepare(&[]).await?;
            for ((live, shadow, old), def) in renames.iter().zip(&tables) {
                if old.rsplit('.').next().map_or(0, str::len) > 63 {
                    return Err(ReadSideError::Rebuild { reason: format!("table name {live} is too long for its rebuild names ({shadow}, {old})") });
                }
                if !self.drop_old && db.table_exists(old).await? {
                    return Err(ReadSideError::Rebuild { reason: format!("{old} is left from an earlier rebuild; drop it, or pass --drop-old") });
                }
                db.create_shadow(live, shadow, def).await?;
            }
            Ok(())
        })?;
        let writer = BatchWriter {
            projection: Arc::new(Redirected { inner: self.projection.clone(), to: renames.iter().map(|(l, s, _)| (l.clone(), s.clone())).collect() }),
            db: db.clone(),
            runtime: runtime.clone(),
            codecs: self.topics.iter().cloned().collect(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            dead_letters: Mutex::new(crate::sink::TransactionalSink::new(&self.clients, &format!("{}-rebuild", self.live), false, None)?),
        };
        let records = self.catch_up(runtime, &db, &writer, on_progress)?;
        // A passing fault (a deadlock PostgreSQL broke, a connection lost) leaves the
        // shadow caught up to a moment ago: catch up again and swap again, a few times.
        let mut records = records;
        let mut attempts = 0;
        loop {
            match runtime.block_on(db.swap_into(&self.live, &renames, self.drop_old)) {
                Ok(()) => break,
                Err(e) if e.recovery() == crate::error::Recovery::Retry && attempts < 5 => {
                    attempts += 1;
                    tracing::warn!(error = %e, attempt = attempts, "the swap failed; catching up and trying again");
                    std::thread::sleep(Duration::from_millis(200 * attempts));
                    records += self.catch_up(runtime, &db, &writer, on_progress)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Rebuilt { records, tables: renames.into_iter().map(|(live, _, old)| (live, old)).collect(), dropped_old: self.drop_old })
    }

    /// Reads every input partition from the shadow's positions until it has reached the
    /// end, committing batches into the shadow tables.
    fn catch_up(
        &self,
        runtime: &tokio::runtime::Handle,
        db: &ProjectionDb,
        writer: &BatchWriter,
        on_progress: &mut dyn FnMut(Progress),
    ) -> Result<u64, ReadSideError> {
        let reader = |what| PartitionReader::new(&self.clients, what, format!("{}-rebuild", self.live), &[]).map_err(|e| ReadSideError::Rebuild { reason: e.to_string() });
        let (records_reader, offsets) = (reader("projection rebuild")?, reader("projection rebuild offsets")?);
        let reading = |e: crate::runtime::RuntimeError| ReadSideError::Rebuild { reason: e.to_string() };
        let names: Vec<&str> = self.topics.iter().map(|(t, _)| t.as_str()).collect();
        let counts = crate::runtime::topics::partition_counts(&self.clients, &names).map_err(reading)?;
        let partitions: Vec<TopicPartition> =
            counts.iter().flat_map(|(topic, n)| (0..*n).map(|p| TopicPartition::new(topic.clone(), p))).collect();
        let stored = runtime.block_on(db.positions())?;
        let mut believed: HashMap<TopicPartition, Option<i64>> = partitions.iter().map(|tp| (tp.clone(), stored.get(tp).copied())).collect();
        let starts = offsets.start_offsets(&partitions, Duration::from_secs(30)).map_err(reading)?;
        let from: HashMap<TopicPartition, i64> = partitions.iter().map(|tp| (tp.clone(), believed[tp].unwrap_or(starts.get(tp).copied().unwrap_or(0)))).collect();
        records_reader.assign(&partitions.iter().map(|tp| (tp.clone(), believed[tp])).collect::<Vec<_>>()).map_err(reading)?;
        let started = Instant::now();
        let mut done = 0u64;
        let mut pending = Vec::new();
        let mut last_check = Instant::now() - Duration::from_secs(1);
        let mut next: HashMap<TopicPartition, i64> = from.clone();
        loop {
            if let Some(Followed::Record(m)) = records_reader.follow(Duration::from_millis(100)) {
                pending.push(in_record(&m));
                while pending.len() < 5_000 {
                    match records_reader.next_fetched() {
                        Some(m) => pending.push(in_record(&m)),
                        None => break,
                    }
                }
            }
            if !pending.is_empty() {
                let (batch, _) = writer.write(&pending, &|tp| believed.get(tp).copied().flatten())?;
                for (tp, _, after) in batch.partitions {
                    believed.insert(tp.clone(), Some(after));
                    next.insert(tp, after);
                }
                done += pending.len() as u64;
                pending.clear();
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = Instant::now();
                let ends = offsets.end_offsets(&partitions, Duration::from_secs(30)).map_err(reading)?;
                let positions = records_reader.positions();
                let at = |tp: &TopicPartition| positions.get(tp).copied().unwrap_or(next[tp]).max(next[tp]);
                let total: i64 = partitions.iter().map(|tp| (ends.get(tp).copied().unwrap_or(0) - from[tp]).max(0)).sum();
                let read: i64 = partitions.iter().map(|tp| (at(tp) - from[tp]).max(0)).sum();
                on_progress(Progress { done: (read.max(0) as u64).max(done), total: total.max(0) as u64, elapsed: started.elapsed() });
                if partitions.iter().all(|tp| at(tp) >= ends.get(tp).copied().unwrap_or(0)) {
                    return Ok(done);
                }
            }
        }
    }
}
