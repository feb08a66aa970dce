//! Snapshots folded again from their events, after a fix to `evolve` (`millrace rebuild`).
//! Pure: the events and the stored snapshot come in as bytes, the new snapshot goes out as
//! bytes. The I/O around it (reading the events topic and the changelog, writing the
//! changed snapshots) is `runtime::refold`.

use super::aggregate::Aggregate;
use super::wire::{self, Outcome, Processed, Snapshot};
use crate::codec::Format;
use std::marker::PhantomData;

/// One committed event of an aggregate, as read from its events topic.
#[derive(Debug, Clone)]
pub struct HistoryEvent {
    pub value: Vec<u8>,
    /// The record's `millrace.schema-version` header (absent: 1).
    pub schema_version: Option<u32>,
    /// The record's `millrace.command-id` header: the command that caused it.
    pub command_id: Option<String>,
}

/// A snapshot folded from its events.
#[derive(Debug, Clone)]
pub struct Refolded {
    pub snapshot: Vec<u8>,
    pub version: u64,
    /// The state as JSON, to compare and to show.
    pub state: serde_json::Value,
}

/// Folds one aggregate type's events into snapshots. `Registry` makes one per aggregate.
pub trait Refolder: Send + Sync {
    /// The snapshot `events` (all of one aggregate, in order) fold into: `upcast_event`,
    /// then `evolve`. The dedup window holds the last accepted commands, from the events'
    /// command ids; what the stored snapshot (`previous`) kept beyond the state (where it
    /// was in its command partition, a wait's deadline) is carried over.
    fn refold(&self, events: &[HistoryEvent], previous: Option<&[u8]>) -> Result<Refolded, String>;

    /// A stored snapshot's version and state as JSON.
    fn read(&self, snapshot: &[u8]) -> Result<(u64, serde_json::Value), String>;
}

pub struct AggregateRefolder<A> {
    pub event_format: Format,
    pub store_format: Format,
    pub dedup_window: usize,
    pub _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Refolder for AggregateRefolder<A> {
    fn refold(&self, events: &[HistoryEvent], previous: Option<&[u8]>) -> Result<Refolded, String> {
        let mut state = A::State::default();
        let mut recent: Vec<Processed> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let event = wire::decode_event::<A>(self.event_format, &e.value, e.schema_version)
                .map_err(|err| format!("event {} cannot be read: {err}", i + 1))?;
            if event.version != i as u64 + 1 {
                return Err(format!("the events skip from version {} to {}", i, event.version));
            }
            state = A::evolve(state, &event.body);
            // One accepted command, one entry, at the version of its last event.
            match (&e.command_id, recent.last_mut()) {
                (Some(id), Some(last)) if last.command_id == *id => last.version = event.version,
                (Some(id), _) => recent.push(Processed { command_id: id.clone(), outcome: Outcome::Accepted, version: event.version, reason: None }),
                (None, _) => {}
            }
        }
        recent.drain(..recent.len().saturating_sub(self.dedup_window.max(1)));
        let before = match previous {
            Some(bytes) => Some(wire::decode_snapshot::<A>(self.store_format, bytes).map_err(|e| format!("the stored snapshot cannot be read: {e}"))?),
            None => None,
        };
        let await_deadline = before.as_ref().and_then(|b| b.await_deadline).filter(|_| A::awaiting(&state).is_some());
        let version = events.len() as u64;
        let json = serde_json::to_value(&state).map_err(|e| e.to_string())?;
        let snapshot = Snapshot { version, state, source_offset: before.map_or(-1, |b| b.source_offset), recent: recent.into(), await_deadline };
        Ok(Refolded { snapshot: wire::encode_snapshot::<A>(self.store_format, &snapshot), version, state: json })
    }

    fn read(&self, snapshot: &[u8]) -> Result<(u64, serde_json::Value), String> {
        let s = wire::decode_snapshot::<A>(self.store_format, snapshot).map_err(|e| e.to_string())?;
        Ok((s.version, serde_json::to_value(&s.state).map_err(|e| e.to_string())?))
    }
}

/// The top-level fields that differ between two states, as `- field: old` / `+ field: new`
/// lines (a whole-value line each when either is not an object).
pub fn diff(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    match (old, new) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let mut fields: Vec<&String> = a.keys().chain(b.keys()).collect();
            fields.sort();
            fields.dedup();
            fields
                .into_iter()
                .filter(|f| a.get(*f) != b.get(*f))
                .flat_map(|f| {
                    let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".to_string(), ToString::to_string);
                    [format!("- {f}: {}", show(a.get(f))), format!("+ {f}: {}", show(b.get(f)))]
                })
                .collect()
        }
        _ if old == new => vec![],
        _ => vec![format!("- {old}"), format!("+ {new}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::customer::{CustomerAggregate, CustomerEvent};
    use serde_json::json;

    fn refolder() -> AggregateRefolder<CustomerAggregate> {
        AggregateRefolder { event_format: Format::Json, store_format: Format::Json, dedup_window: 2, _aggregate: PhantomData }
    }

    fn event(version: u64, e: &CustomerEvent, command: &str) -> HistoryEvent {
        HistoryEvent {
            value: wire::encode_event::<CustomerAggregate>(Format::Json, "c1", version, e),
            schema_version: None,
            command_id: Some(command.into()),
        }
    }

    #[test]
    fn events_fold_into_a_snapshot_with_the_last_accepted_commands() {
        let created = CustomerEvent::CustomerCreated { name: "a".into(), email: "a@x".into() };
        let updated = CustomerEvent::CustomerUpdated { name: "b".into(), email: "b@x".into() };
        let events = [event(1, &created, "c-1"), event(2, &updated, "c-2"), event(3, &CustomerEvent::CustomerDeleted {}, "c-3")];
        let r = refolder().refold(&events, None).unwrap();
        assert_eq!(r.version, 3);
        assert_eq!(r.state, json!({"name": "b", "email": "b@x", "status": "DELETED"}));
        let s = wire::decode_snapshot::<CustomerAggregate>(Format::Json, &r.snapshot).unwrap();
        assert_eq!(s.recent.to_vec().iter().map(|p| (p.command_id.as_str(), p.version)).collect::<Vec<_>>(), [("c-2", 2), ("c-3", 3)], "the window's size");
        assert_eq!(refolder().read(&r.snapshot).unwrap(), (3, r.state.clone()));
    }

    #[test]
    fn a_gap_in_the_versions_is_an_error_and_diffs_name_the_fields() {
        let created = CustomerEvent::CustomerCreated { name: "a".into(), email: "a@x".into() };
        let err = refolder().refold(&[event(1, &created, "c-1"), event(3, &created, "c-3")], None).unwrap_err();
        assert!(err.contains("from version 1 to 3"), "{err}");
        assert_eq!(
            diff(&json!({"email": "a", "name": "n"}), &json!({"email": "b", "name": "n"})),
            ["- email: \"a\"", "+ email: \"b\""]
        );
        assert!(diff(&json!(1), &json!(1)).is_empty());
    }
}
