//! Every metric millrace exposes, in one list: its name, kind and meaning (the same as the
//! table in docs/operations.md, which a test keeps in step). At start-up each is described
//! (Prometheus `# HELP`) and each counter and gauge is registered at zero, so a dashboard
//! or an alert finds the series before the first event (a dead letter, a fenced producer)
//! instead of "no data". Per-partition gauges are the exception: they exist only while
//! their partition is here (`partition_gauges`).

use super::partition_gauges;

/// How a metric is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// One series per partition held here, removed when the partition goes.
    PartitionGauge,
}

pub const METRICS: &[(&str, Kind, &str)] = &[
    ("millrace_consumer_lag", Kind::PartitionGauge, "records in an input partition not yet handed to processing (last stable offset − position); from librdkafka statistics every 5 s. Transaction markers count as one record each"),
    ("millrace_commands_total", Kind::Counter, "commands answered: accepted, rejected, wrong_expected_version, duplicate, invalid, failed"),
    ("millrace_events_total", Kind::Counter, "events written"),
    ("millrace_dead_letters_total", Kind::Counter, "records sent to the dead-letter topic, by the input topic they came from and a fixed reason: bad_record (undecodable), invalid_command (answered invalid), failed (answered failed), no_destination (a reply-to topic the broker says does not exist)"),
    ("millrace_transient_errors_total", Kind::Counter, "transient failures retried with backoff (e.g. metadata: no answer on whether an output topic exists)"),
    ("millrace_out_of_order_records_total", Kind::Counter, "records older than one before them in their input partition, counted at the partition's running maximum (inputs whose event time a table or join relies on)"),
    ("millrace_transactions_total", Kind::Counter, "committed or aborted transactions"),
    ("millrace_commit_seconds", Kind::Histogram, "time of a commit: offsets sent, outputs flushed, commit_transaction (histogram: _bucket, _sum, _count)"),
    ("millrace_input_delay_seconds", Kind::Histogram, "from the timestamp of a transaction's first input record (for a command: when it was sent) until it is processed; once per transaction (histogram)"),
    ("millrace_transaction_open_seconds", Kind::Histogram, "from a transaction's first record until its commit starts: how long outputs wait for the commit interval (histogram)"),
    ("millrace_fenced_total", Kind::Counter, "times this instance's producer was fenced (a zombie, or a newer instance with its id)"),
    ("millrace_offsets_released_total", Kind::Counter, "transactions holding only offsets for the group, aborted by a new producer before its first offset fetch, to end what an earlier epoch of its producer id left pending"),
    ("millrace_producer_hangs_total", Kind::Counter, "Kafka calls that did not return within their timeout and a margin (librdkafka's send_offsets_to_transaction after a broker restart); each abandons its producer for a new one"),
    ("millrace_restore_records_total", Kind::Counter, "changelog records read by restores. After a clean restart: 0"),
    ("millrace_restore_remaining", Kind::PartitionGauge, "changelog records a running restore still has to read"),
    ("millrace_store_keys", Kind::PartitionGauge, "RocksDB's estimate of keys in a store partition"),
    ("millrace_rebalances_total", Kind::Counter, "revoke, lost (the group dropped this instance, e.g. after a stall past the session timeout), assign and error callbacks"),
    ("millrace_rebalance_seconds", Kind::Histogram, "from a revocation until the newly assigned tasks are restored: how long partitions stood still (histogram)"),
    ("millrace_quarantined_keys", Kind::Gauge, "keys whose snapshot cannot be read, as their owners have met them; each command for one is answered failed"),
    ("millrace_refused_records_total", Kind::Counter, "input records (by input topic) whose outputs a topic refused for good; each is answered failed"),
    ("millrace_replayed_records_total", Kind::Counter, "commands read again whose snapshot already holds them (offsets rolled back past a committed transaction); not answered twice"),
    ("millrace_skipped_records_total", Kind::Counter, "input records passed over because even their failed answer was refused"),
    ("millrace_restore_stalls_total", Kind::Counter, "restores that made no progress for 10 s short of the end (retried; the task stays unready)"),
    ("millrace_store_rebuilds_total", Kind::Counter, "stores found holding a transaction the broker aborted after acknowledging its commit, and rebuilt from the committed changelog"),
    ("millrace_assigned_partitions", Kind::Gauge, "input partitions assigned to each processing thread (each is a group member of its own)"),
    ("millrace_members_live", Kind::Gauge, "instances with a fresh heartbeat in the members directory"),
    ("millrace_standby_lag", Kind::PartitionGauge, "changelog records a standby copy has not applied yet (a transaction marker counts as one)"),
    ("millrace_query_forwards_total", Kind::Counter, "key queries forwarded to their owner: answered, or unreachable (answered 503)"),
    ("millrace_table_updates_total", Kind::Counter, "table upserts and deletes"),
    ("millrace_join_unmatched_total", Kind::Counter, "inner-join stream records without a table match (dropped)"),
    ("millrace_awaits_total", Kind::Counter, "waits decided: ready (the aggregate's ready command ran) or expired"),
    ("millrace_projection_events_total", Kind::Counter, "events a projection committed to PostgreSQL (dead letters included), by projection"),
    ("millrace_projection_rows_total", Kind::Counter, "rows a projection's statements changed, by projection (an event skipped by the version guard changes none)"),
    ("millrace_projection_dead_letters_total", Kind::Counter, "events a projection sent to the dead-letter topic: not JSON, not mappable, or a row the database refused"),
    ("millrace_projection_batch_seconds", Kind::Histogram, "from a projection batch's first statement to its commit in PostgreSQL, retries included (histogram)"),
    ("millrace_projection_lag", Kind::Gauge, "records of an input partition a projection has not read yet (last stable offset − position), by projection, topic and partition; from librdkafka statistics every 5 s"),
    ("millrace_outbox_rows_total", Kind::Counter, "outbox rows relayed to their topics, by outbox"),
    ("millrace_outbox_dead_letters_total", Kind::Counter, "outbox rows sent to the dead-letter topic instead: a topic that does not exist or cannot, a record the broker refuses for good"),
    ("millrace_outbox_skipped_rows_total", Kind::Counter, "outbox rows refused, whose dead letter was refused too (larger than any topic takes); each is logged"),
    ("millrace_outbox_batch_seconds", Kind::Histogram, "one outbox step: reading its rows, the Kafka transaction, deleting them (histogram)"),
    ("millrace_http_refused_total", Kind::Counter, "HTTP requests refused before a handler ran, by status: 401, 403 (tokens) or 503 (too many at once)"),
];

/// Describes every metric and registers the counters and gauges at zero.
pub fn register() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => {
                metrics::describe_counter!(name, help);
                metrics::counter!(name).increment(0);
            }
            Kind::Gauge => {
                metrics::describe_gauge!(name, help);
                metrics::gauge!(name).increment(0.0);
            }
            Kind::Histogram => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
            Kind::PartitionGauge => debug_assert!(
                [partition_gauges::CONSUMER_LAG, partition_gauges::STORE_KEYS, partition_gauges::RESTORE_REMAINING, partition_gauges::STANDBY_LAG].contains(&name),
                "{name} is not a partition gauge"
            ),
        }
    }
}
