//! The user's side of event sourcing: an `Aggregate` is a pure `decide` and a pure `evolve`.
//! No I/O happens here, which is what lets the core be property-tested and run under the
//! broker-free driver. The engine never names a domain type; it only sees this trait.

use serde::{de::DeserializeOwned, Serialize};

/// Why `decide` refused a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A business rule says no ("customer already exists"). The caller gets a normal
    /// `rejected` reply.
    Rule(String),
    /// The command itself is malformed (an empty name, say). It goes to the dead-letter
    /// topic with this reason, like undecodable bytes.
    Malformed(String),
}

/// What a state waits for before it can move on: keys of another table (an order's
/// products), and the command that moves it on when they are all there, or when the wait
/// times out. The topology's `awaits` names the table and the timeout.
pub struct Await<C> {
    pub keys: Vec<String>,
    pub ready: C,
    /// Gets the reason (which keys did not appear in time).
    pub expired: fn(String) -> C,
}

/// An event-sourced aggregate.
///
/// JSON support comes from serde: commands and events are adjacently tagged enums
/// (`#[serde(tag = "type", content = "payload")]`), which gives the documented
/// `{"type": "...", "payload": {...}}` shapes. Protobuf support is optional: override the
/// `*_proto` hooks and `supports_protobuf`.
pub trait Aggregate: Send + Sync + 'static {
    type Command: DeserializeOwned + Send;
    type Event: Serialize + DeserializeOwned + Clone + Send;
    type State: Serialize + DeserializeOwned + Default + Clone + Send;

    /// Decide which events a command causes, given the current state. Pure.
    fn decide(state: &Self::State, command: &Self::Command) -> Result<Vec<Self::Event>, Rejection>;

    /// Apply one event to the state. Pure and total: every stored event must apply.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// The event's type name, as in its JSON `type` (used by the protobuf envelope).
    fn event_type(event: &Self::Event) -> &'static str;

    /// While the state waits for keys of another table, what it waits for. Pure. The
    /// engine holds the aggregate in a pending set (in its snapshot, so it survives crashes
    /// and rebalances) and runs `ready` or `expired` as the aggregate's next command.
    fn awaiting(state: &Self::State) -> Option<Await<Self::Command>> {
        let _ = state;
        None
    }

    /// Schema version of the events this build writes (header `millrace.schema-version`).
    const EVENT_SCHEMA_VERSION: u32 = 1;
    /// Schema version of the snapshot states this build writes (in the snapshot envelope).
    const STATE_SCHEMA_VERSION: u32 = 1;

    /// Turns a JSON event (`{"type", "payload"}`) written at schema `version` into the
    /// current shape. Called only for versions older than `EVENT_SCHEMA_VERSION`.
    fn upcast_event(version: u32, event: serde_json::Value) -> Result<serde_json::Value, String> {
        let _ = version;
        Ok(event)
    }

    /// Turns a JSON snapshot state written at schema `version` into the current shape.
    /// Called only for versions older than `STATE_SCHEMA_VERSION`. Protobuf states evolve
    /// by field numbers instead: unknown fields are skipped, missing ones take defaults.
    fn upcast_state(version: u32, state: serde_json::Value) -> Result<serde_json::Value, String> {
        let _ = version;
        Ok(state)
    }

    fn supports_protobuf() -> bool {
        false
    }
    fn command_from_proto(type_name: &str, _payload: &[u8]) -> Result<Self::Command, String> {
        Err(format!("no protobuf schema for command type {type_name}"))
    }
    fn event_to_proto(_event: &Self::Event) -> Vec<u8> {
        Vec::new()
    }
    fn state_to_proto(_state: &Self::State) -> Vec<u8> {
        Vec::new()
    }
    fn state_from_proto(_bytes: &[u8]) -> Result<Self::State, String> {
        Err("no protobuf schema for the state".into())
    }
}

/// Fold events into a state, as the engine does: `evolve` over each, in order.
pub fn fold<A: Aggregate>(state: A::State, events: &[A::Event]) -> A::State {
    events.iter().fold(state, A::evolve)
}
