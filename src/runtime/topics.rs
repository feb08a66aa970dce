//! Makes sure every topic the topology needs exists with the expected partition count,
//! creating what is missing (changelogs compacted). Mismatches stop the start with a
//! message that names the topics and their counts.

use super::RuntimeError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use crate::kafka::{Clients, LastError};
use std::collections::BTreeMap;
use std::time::Duration;

pub use crate::topology::TopicNeed;

/// Partition counts of existing topics, by name (topics that do not exist are absent).
pub fn partition_counts(clients: &Clients, names: &[&str]) -> Result<BTreeMap<String, i32>, RuntimeError> {
    let kafka = |source| RuntimeError::Kafka { op: "fetch metadata", topic: String::new(), source };
    let consumer: BaseConsumer<LastError> = clients.client().create_with_context(LastError::default()).map_err(kafka)?;
    // The first call of a process: if the cluster cannot be reached, say why.
    let md = consumer.fetch_metadata(None, Duration::from_secs(30)).map_err(|source| {
        // librdkafka hands its error reports (a failed TLS handshake, SASL refusing the
        // credentials) to the context only when the client is polled.
        for _ in 0..5 {
            if consumer.context().last().is_some() {
                break;
            }
            let _ = consumer.poll(Duration::from_millis(100));
        }
        RuntimeError::Unreachable {
            bootstrap: clients.bootstrap_servers().to_string(),
            reason: consumer.context().last().unwrap_or_else(|| source.to_string()),
        }
    })?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && names.contains(&t.name()))
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// Creates missing topics and checks the partition counts of existing ones.
pub fn ensure(clients: &Clients, needs: &[TopicNeed]) -> Result<(), RuntimeError> {
    let names: Vec<&str> = needs.iter().map(|n| n.name.as_str()).collect();
    let existing = partition_counts(clients, &names)?;
    for need in needs {
        if let Some(&found) = existing.get(&need.name) {
            if found != need.partitions {
                return Err(RuntimeError::PartitionMismatch {
                    topic: need.name.clone(),
                    expected: need.partitions,
                    found,
                });
            }
        }
    }
    let missing: Vec<&TopicNeed> = needs.iter().filter(|n| !existing.contains_key(&n.name)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let kafka = |topic: &str, source| RuntimeError::Kafka { op: "create topic", topic: topic.into(), source };
    let admin: AdminClient<DefaultClientContext> = clients
        .client()
        .create()
        .map_err(|e| kafka("", e))?;
    let retention: BTreeMap<&str, Option<String>> =
        missing.iter().map(|n| (n.name.as_str(), n.retention_ms.map(|ms| ms.to_string()))).collect();
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|n| {
            let t = NewTopic::new(&n.name, n.partitions, TopicReplication::Fixed(n.replication));
            match (n.compacted, &retention[n.name.as_str()]) {
                (true, Some(ms)) => t.set("cleanup.policy", "compact,delete").set("retention.ms", ms),
                (true, None) => t.set("cleanup.policy", "compact"),
                (false, _) => t,
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics(&new, &opts)).map_err(|e| kafka("", e))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            // Another instance created it between our check and our request.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(RuntimeError::CreateTopic { topic: name, code });
            }
        }
    }
    // Creation is asynchronous on the broker: wait until metadata shows every new topic.
    for _ in 0..100 {
        let now = partition_counts(clients, &names)?;
        if needs.iter().all(|n| now.get(&n.name) == Some(&n.partitions)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(RuntimeError::CreateTopic { topic: names.join(","), code: RDKafkaErrorCode::RequestTimedOut })
}
