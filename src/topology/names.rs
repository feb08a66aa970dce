//! The one documented way internal topic names are derived (docs/topology.md). Renaming an
//! application id or a store renames these topics, and so orphans their state.

/// `<application_id>-<store>-changelog`, as Kafka Streams names its changelogs.
pub fn changelog_topic(application_id: &str, store: &str) -> String {
    format!("{application_id}-{store}-changelog")
}

/// `<application_id>-dead-letters`, unless the topology names one.
pub fn dead_letter_topic(application_id: &str) -> String {
    format!("{application_id}-dead-letters")
}

/// `<application_id>-members`: where instances publish which store partitions they serve.
pub fn members_topic(application_id: &str) -> String {
    format!("{application_id}-members")
}

/// `<application_id>-<rekey node>-repartition`, as Kafka Streams names its repartition topics.
pub fn repartition_topic(application_id: &str, node: &str) -> String {
    format!("{application_id}-{node}-repartition")
}

/// `<application_id>-progress`: how far each node that feeds a table has processed its
/// input, in event time (docs/architecture.md, "Event-time progress").
pub fn progress_topic(application_id: &str) -> String {
    format!("{application_id}-progress")
}
