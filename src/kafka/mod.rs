//! The one place every Kafka client of the process is configured: the group consumer, the
//! transactional producers, the readers outside the group (restore, event history, global
//! tables, standbys, members, gateway replies), the gateway and members producers, and the
//! admin clients of topic creation and `plan`.
//!
//! `PolledProducer` is how the process runs a producer: its events served by a thread
//! that sleeps until there are any.
//!
//! `Clients` carries the bootstrap servers and the user's settings (a properties file such
//! as `deploy/kafka-local client-config` prints: TLS, SASL, timeouts), and hands every
//! client the same base. Settings that would silently break exactly-once or partitioning
//! are refused when `Clients` is built, with the key named; the binary exits 2 on that.
//!
//! Secrets never reach a log: `Debug` shows the keys, with the values of secret ones
//! redacted.
//!
//! May use: nothing of millrace; only rdkafka's `ClientConfig` and producer (and libc for
//! `PolledProducer`'s wake-ups).

mod producer;
mod properties;

pub use producer::PolledProducer;
pub use properties::parse_properties;

use rdkafka::ClientConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// Settings the engine sets itself because exactly-once, co-partitioning or membership
/// depend on them, with why. A user value for any of them is refused.
const PINNED: &[(&str, &str)] = &[
    ("isolation.level", "every reader must see committed transactions only (read_committed)"),
    ("enable.auto.commit", "input offsets commit inside the transaction, never on their own"),
    ("enable.idempotence", "the transactional producer needs idempotence"),
    ("transactional.id", "derived from the application and instance id: one writer per partition"),
    ("partitioner", "every record must be partitioned like Java clients (murmur2)"),
    ("group.id", "the application_id is the consumer group"),
    ("group.instance.id", "derived from the instance id: static membership"),
    ("partition.assignment.strategy", "co-partitioned inputs need the range assignor"),
    ("bootstrap.servers", "set it with --bootstrap-servers"),
    ("metadata.broker.list", "set it with --bootstrap-servers"),
];

/// Keys whose values are secrets: shown as `<redacted>`.
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "ssl.key.pem", "token"].iter().any(|s| k.contains(s))
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    #[error("{file}:{line}: expected `key=value`, found {found:?}")]
    Syntax { file: PathBuf, line: usize, found: String },
    #[error("cannot read Kafka settings {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("Kafka setting {key:?} ({origin}) cannot be overridden: {why}")]
    Pinned { key: String, origin: String, why: &'static str },
}

impl KafkaConfigError {
    /// Bad settings are the user's to fix: never retried.
    pub fn recovery(&self) -> crate::error::Recovery {
        crate::error::Recovery::Reject
    }
}

/// A user setting and where it came from, for error messages.
#[derive(Clone)]
struct Setting {
    key: String,
    value: String,
}

struct Inner {
    bootstrap_servers: String,
    /// For every client.
    common: Vec<Setting>,
    /// For the group consumer only.
    consumer: Vec<Setting>,
    /// For the transactional producers only.
    producer: Vec<Setting>,
}

/// The client factory: cheap to clone, shared by every part of the runtime.
#[derive(Clone)]
pub struct Clients(Arc<Inner>);

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |s: &[Setting]| -> Vec<String> {
            s.iter()
                .map(|x| if is_secret(&x.key) { format!("{}=<redacted>", x.key) } else { format!("{}={}", x.key, x.value) })
                .collect()
        };
        f.debug_struct("Clients")
            .field("bootstrap_servers", &self.0.bootstrap_servers)
            .field("common", &show(&self.0.common))
            .field("consumer", &show(&self.0.consumer))
            .field("producer", &show(&self.0.producer))
            .finish()
    }
}

impl Clients {
    /// Checks the user's settings: `common` for every client (a properties file),
    /// `consumer` and `producer` for the group consumer and the transactional producers.
    /// `origin` names where `common` came from, for the error.
    pub fn new(
        bootstrap_servers: &str,
        common: Vec<(String, String)>,
        origin: &str,
        consumer: Vec<(String, String)>,
        producer: Vec<(String, String)>,
    ) -> Result<Self, KafkaConfigError> {
        let check = |settings: Vec<(String, String)>, origin: &str| -> Result<Vec<Setting>, KafkaConfigError> {
            settings
                .into_iter()
                .map(|(key, value)| {
                    let key = key.trim().to_string();
                    match PINNED.iter().find(|(k, _)| *k == key) {
                        Some((_, why)) => Err(KafkaConfigError::Pinned { key, origin: origin.to_string(), why }),
                        None => Ok(Setting { key, value: value.trim().to_string() }),
                    }
                })
                .collect()
        };
        Ok(Self(Arc::new(Inner {
            bootstrap_servers: bootstrap_servers.to_string(),
            common: check(common, origin)?,
            consumer: check(consumer, "--consumer-config")?,
            producer: check(producer, "--producer-config")?,
        })))
    }

    /// No user settings: a plaintext local broker (tests, the broker-free driver).
    pub fn plain(bootstrap_servers: &str) -> Self {
        Self(Arc::new(Inner { bootstrap_servers: bootstrap_servers.to_string(), common: vec![], consumer: vec![], producer: vec![] }))
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.0.bootstrap_servers
    }

    /// The base of every client: the bootstrap servers and the user's common settings.
    pub fn client(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.0.bootstrap_servers);
        // librdkafka 2.12 re-bootstraps as soon as every broker it knows is down (KIP-1102),
        // and its re-bootstrap decommissions the brokers it had learned. With one broker
        // restarting, that is every restart: clients were seen stuck without a connection
        // to the partition leader afterwards, and transactions caught by it ended
        // differently on different partitions (docs/operations.md). librdkafka #5600
        // (after 2.12) fixes parts of it. Without re-bootstrapping, a client reconnects to
        // the brokers it knows when they are back; a user's setting still wins.
        cfg.set("metadata.recovery.strategy", "none");
        // A new client learns broker ids from its bootstrap connection, drops it, and
        // connects again to the broker it learned; librdkafka spaces such connections by
        // half of `reconnect.backoff.ms` (at least 11 ms). At its default of 100 ms every
        // new client waited 50 ms before it could send anything: the admin client, the
        // members reader, the producers and the group member of a start, one after the
        // other, in 0.21 s of every start (`debug=broker`: "still suppressed for 48ms").
        // A lost connection is retried after 15-30 ms, doubling up to
        // `reconnect.backoff.max.ms` (10 s); a user's setting still wins.
        cfg.set("reconnect.backoff.ms", "20");
        for s in &self.0.common {
            cfg.set(&s.key, &s.value);
        }
        cfg
    }

    /// A reader outside the group: assigned partitions, never a committed offset, only
    /// committed transactions. Callers add what is particular to them.
    pub fn reader(&self, group: String) -> ClientConfig {
        let mut cfg = self.client();
        cfg.set("group.id", group).set("enable.auto.commit", "false").set("isolation.level", "read_committed");
        cfg
    }

    /// Applies the user's group-consumer settings over the engine's defaults.
    pub fn apply_consumer(&self, cfg: &mut ClientConfig) {
        for s in &self.0.consumer {
            cfg.set(&s.key, &s.value);
        }
    }

    /// Applies the user's producer settings over the engine's defaults.
    pub fn apply_producer(&self, cfg: &mut ClientConfig) {
        for s in &self.0.producer {
            cfg.set(&s.key, &s.value);
        }
    }
}

/// A client context that keeps the last error librdkafka reported (a refused TLS
/// handshake, failed SASL authentication), so a failure to reach the cluster can say why
/// instead of only "timed out".
#[derive(Default)]
pub struct LastError(std::sync::Mutex<Option<String>>);

impl LastError {
    pub fn last(&self) -> Option<String> {
        self.0.lock().expect("last error lock").clone()
    }
}

impl rdkafka::ClientContext for LastError {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka client error");
        *self.0.lock().expect("last error lock") = Some(reason.to_string());
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn settings_that_break_exactly_once_or_partitioning_are_refused_by_name() {
        for key in ["isolation.level", "enable.auto.commit", "partitioner", "transactional.id", "partition.assignment.strategy"] {
            for (common, consumer, producer) in [
                (vec![kv(key, "x")], vec![], vec![]),
                (vec![], vec![kv(key, "x")], vec![]),
                (vec![], vec![], vec![kv(key, "x")]),
            ] {
                let err = Clients::new("b:1", common, "client.properties", consumer, producer).unwrap_err();
                assert!(matches!(&err, KafkaConfigError::Pinned { key: k, .. } if k == key), "{err}");
                assert!(err.to_string().contains(key), "{err}");
            }
        }
    }

    #[test]
    fn every_client_gets_the_common_settings_and_only_its_own_role_settings() {
        let c = Clients::new(
            "b:1",
            vec![kv("security.protocol", "SASL_SSL"), kv("sasl.password", "hunter2")],
            "f",
            vec![kv("session.timeout.ms", "30000")],
            vec![kv("linger.ms", "20")],
        )
        .unwrap();
        let reader = c.reader("g".into());
        assert_eq!(reader.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(reader.get("isolation.level"), Some("read_committed"));
        assert_eq!(reader.get("session.timeout.ms"), None, "consumer settings are the group consumer's");
        let mut consumer = c.client();
        c.apply_consumer(&mut consumer);
        assert_eq!((consumer.get("sasl.password"), consumer.get("session.timeout.ms")), (Some("hunter2"), Some("30000")));
        let mut producer = c.client();
        c.apply_producer(&mut producer);
        assert_eq!((producer.get("linger.ms"), producer.get("session.timeout.ms")), (Some("20"), None));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Clients::new("b:1", vec![kv("sasl.password", "hunter2"), kv("sasl.username", "ada")], "f", vec![], vec![]).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("sasl.password=<redacted>") && shown.contains("sasl.username=ada"), "{shown}");
    }
}
