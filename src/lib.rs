//! millrace: event sourcing on Apache Kafka, in the style of Kafka Streams.
//!
//! The data path, in module order:
//!
//! | module | owns |
//! |---|---|
//! | [`record`] | records in and out, headers, `TopicPartition`, the `Collector` trait |
//! | [`codec`] | protobuf and JSON wire formats, the Java-compatible murmur2 partitioner |
//! | [`store`] | RocksDB stores, the changelogged overlay, shared memory budget |
//! | [`processor`] | the `Aggregate` trait (pure decide/evolve) and its processor, dead letters |
//! | [`topology`] | topology files: schema, validation with file:line:col errors |
//! | [`kafka`] | the client factory: every Kafka client's settings, the user's included; refuses unsafe ones; the producer whose events a sleeping thread serves |
//! | [`sink`] | the transactional producer and its fencing rules |
//! | [`runtime`] | `App`: consumer group, tasks, restore, commit cycle, rebalances |
//! | [`query`] | the HTTP query server |
//! | [`readside`] | projections into PostgreSQL, exactly once, with positions in the same transaction |
//! | [`domain`] | example aggregates (customer, product, order); the engine never names them |
//! | `testing` | the broker-free `TopologyDriver` (feature `test-util`) |
//! | [`error`] | `Recovery`: what each error asks the caller to do next |

#![deny(unsafe_code)]

pub mod codec;
pub mod domain;
pub mod error;
pub mod kafka;
pub mod processor;
pub mod query;
pub mod readside;
pub mod record;
pub mod runtime;
pub mod sink;
pub mod store;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod topology;

pub use runtime::{App, AppConfig, Registry};

/// The registry of every aggregate this crate ships, as the `millrace` binary uses it.
pub fn builtin_registry() -> Registry {
    let mut r = Registry::new();
    r.register::<domain::customer::CustomerAggregate>("customer");
    r.register::<domain::order::OrderAggregate>("order");
    r.register::<domain::product::ProductAggregate>("product");
    r
}
