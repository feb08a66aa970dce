//! The topics a topology needs, internal ones included: what `run` creates when missing
//! and what `plan` compares with the cluster.

use super::Topology;

/// Why a topic exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    /// Declared under `topics`.
    Declared,
    /// A store's compacted changelog, co-partitioned with the aggregate's command topic.
    Changelog,
    /// Where records that cannot be processed go.
    DeadLetters,
    /// A re-key node's output, partitioned like the table it feeds.
    Repartition,
    /// Which instance serves which store partition, and at which HTTP address.
    Members,
    /// How far each node that feeds a global table has processed its input.
    Progress,
    /// Where each outbox relay is in its table, written with the rows it relays.
    OutboxPositions,
}

/// A topic the application needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNeed {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub compacted: bool,
    /// With `compacted`: also delete records older than this (cleanup.policy=compact,delete).
    pub retention_ms: Option<u64>,
    pub role: TopicRole,
}

impl TopicNeed {
    /// A plain topic (for tools and tests that create their own).
    pub fn plain(name: impl Into<String>, partitions: i32) -> Self {
        Self { name: name.into(), partitions, replication: 1, compacted: false, retention_ms: None, role: TopicRole::Declared }
    }
}

impl Topology {
    pub fn topic_needs(&self) -> Vec<TopicNeed> {
        let mut needs: Vec<TopicNeed> = self
            .topics
            .iter()
            .map(|(name, t)| TopicNeed {
                name: name.clone(),
                partitions: t.partitions,
                replication: t.replication,
                compacted: t.compacted,
                retention_ms: None,
                role: TopicRole::Declared,
            })
            .collect();
        for a in self.aggregates.values() {
            // Task p writes changelog partition p: same partition count as the command topic.
            needs.push(TopicNeed {
                name: a.store.changelog.clone(),
                partitions: a.commands.partitions,
                replication: a.commands.replication,
                compacted: true,
                retention_ms: None,
                role: TopicRole::Changelog,
            });
        }
        for t in self.tables.values() {
            if t.store.changelog == t.topic.name {
                continue; // the input topic is the changelog
            }
            needs.push(TopicNeed {
                name: t.store.changelog.clone(),
                partitions: t.topic.partitions,
                replication: t.topic.replication,
                compacted: true,
                retention_ms: t.store.spec.retention_ms,
                role: TopicRole::Changelog,
            });
        }
        for r in self.rekeys.values() {
            needs.push(TopicNeed {
                name: r.repartition.name.clone(),
                partitions: r.repartition.partitions,
                replication: r.repartition.replication,
                compacted: false,
                retention_ms: None,
                role: TopicRole::Repartition,
            });
        }
        if !self.topics.contains_key(&self.dead_letter_topic()) {
            needs.push(TopicNeed {
                name: self.dead_letter_topic(),
                partitions: self.dead_letter.partitions,
                replication: 1,
                compacted: false,
                retention_ms: None,
                role: TopicRole::DeadLetters,
            });
        }
        needs.push(TopicNeed {
            name: self.members_topic(),
            partitions: 1,
            replication: self.topics.values().map(|t| t.replication).max().unwrap_or(1),
            compacted: true,
            retention_ms: None,
            role: TopicRole::Members,
        });
        if !self.progress_writers().is_empty() {
            needs.push(TopicNeed {
                name: self.progress_topic(),
                partitions: 1,
                replication: self.topics.values().map(|t| t.replication).max().unwrap_or(1),
                compacted: true,
                retention_ms: None,
                role: TopicRole::Progress,
            });
        }
        if !self.outboxes.is_empty() {
            needs.push(TopicNeed {
                name: self.outbox_positions_topic(),
                partitions: 1,
                replication: self.topics.values().map(|t| t.replication).max().unwrap_or(1),
                compacted: true,
                retention_ms: None,
                role: TopicRole::OutboxPositions,
            });
        }
        // A declared topic that is also internal (a changelog named under `topics`) is
        // listed once, with its derived shape.
        let internal: Vec<String> = needs.iter().filter(|n| n.role != TopicRole::Declared).map(|n| n.name.clone()).collect();
        needs.retain(|n| n.role != TopicRole::Declared || !internal.contains(&n.name));
        needs
    }
}
