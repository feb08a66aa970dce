//! `millrace plan`: what running this topology would change on the cluster. It lists the
//! topics to create, the ones that exist with the wrong shape, and the internal topics of
//! this application that no node uses any more: the state a rename would orphan.
//! `--apply` creates what is missing and never deletes anything.

use super::topics::{self, TopicNeed};
use super::RuntimeError;
use crate::topology::Topology;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use crate::kafka::Clients;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Create(TopicNeed),
    Ok(TopicNeed),
    PartitionMismatch { topic: String, want: i32, found: i32 },
    PolicyMismatch { topic: String, want: &'static str, found: String },
    Orphan { topic: String },
}

impl Step {
    pub fn is_problem(&self) -> bool {
        matches!(self, Step::PartitionMismatch { .. } | Step::PolicyMismatch { .. })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = |n: &TopicNeed| if n.compacted { "compact" } else { "delete" };
        match self {
            Step::Create(n) => write!(f, "create    {}  partitions={} replication={} cleanup.policy={}  ({:?})",
                n.name, n.partitions, n.replication, policy(n), n.role),
            Step::Ok(n) => write!(f, "ok        {}  partitions={}", n.name, n.partitions),
            Step::PartitionMismatch { topic, want, found } => write!(f,
                "mismatch  {topic}  partitions: topology wants {want}, cluster has {found} (millrace never changes this; fix the file or the topic)"),
            Step::PolicyMismatch { topic, want, found } => write!(f,
                "mismatch  {topic}  cleanup.policy: topology wants {want}, cluster has {found}"),
            Step::Orphan { topic } => write!(f,
                "orphan    {topic}  (internal topic of this application that no node uses; a renamed store or application leaves its state here)"),
        }
    }
}

/// Compares the topology with the cluster.
pub fn plan(t: &Topology, clients: &Clients) -> Result<Vec<Step>, RuntimeError> {
    let kafka = |op, source| RuntimeError::Kafka { op, topic: String::new(), source };
    let needs = t.topic_needs();
    let consumer: BaseConsumer = clients.client().create().map_err(|e| kafka("connect", e))?;
    let md = consumer.fetch_metadata(None, Duration::from_secs(30)).map_err(|e| kafka("fetch metadata", e))?;
    let existing: BTreeMap<String, i32> =
        md.topics().iter().filter(|x| x.error().is_none()).map(|x| (x.name().to_string(), x.partitions().len() as i32)).collect();
    let policies = cleanup_policies(clients, needs.iter().filter(|n| existing.contains_key(&n.name)).map(|n| n.name.as_str()))?;
    let mut steps = Vec::new();
    for n in &needs {
        match existing.get(&n.name) {
            None => steps.push(Step::Create(n.clone())),
            Some(&found) if found != n.partitions => {
                steps.push(Step::PartitionMismatch { topic: n.name.clone(), want: n.partitions, found })
            }
            Some(_) => {
                let found = policies.get(&n.name).cloned().unwrap_or_default();
                if n.compacted && !found.contains("compact") {
                    steps.push(Step::PolicyMismatch { topic: n.name.clone(), want: "compact", found });
                } else {
                    steps.push(Step::Ok(n.clone()));
                }
            }
        }
    }
    // Internal names are derived one way (topology::names): `<app>-<store>-changelog`.
    let prefix = format!("{}-", t.application_id);
    for name in existing.keys() {
        if name.starts_with(&prefix) && name.ends_with("-changelog") && !needs.iter().any(|n| &n.name == name) {
            steps.push(Step::Orphan { topic: name.clone() });
        }
    }
    Ok(steps)
}

fn cleanup_policies<'a>(
    clients: &Clients,
    names: impl Iterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>, RuntimeError> {
    let kafka = |source| RuntimeError::Kafka { op: "describe configs", topic: String::new(), source };
    let admin: AdminClient<DefaultClientContext> = clients.client().create().map_err(kafka)?;
    let specs: Vec<ResourceSpecifier<'_>> = names.map(ResourceSpecifier::Topic).collect();
    if specs.is_empty() {
        return Ok(BTreeMap::new());
    }
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.describe_configs(&specs, &opts)).map_err(kafka)?;
    Ok(results
        .into_iter()
        .filter_map(|r| r.ok())
        .filter_map(|r| {
            let name = match &r.specifier {
                rdkafka::admin::OwnedResourceSpecifier::Topic(n) => n.clone(),
                _ => return None,
            };
            let policy = r.get("cleanup.policy").and_then(|e| e.value.clone()).unwrap_or_default();
            Some((name, policy))
        })
        .collect())
}

/// Creates every topic the plan says to create. Never deletes or alters anything.
pub fn apply(steps: &[Step], clients: &Clients) -> Result<usize, RuntimeError> {
    let create: Vec<TopicNeed> = steps.iter().filter_map(|s| match s { Step::Create(n) => Some(n.clone()), _ => None }).collect();
    topics::ensure(clients, &create)?;
    Ok(create.len())
}
