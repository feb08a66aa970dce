//! Command, event, reply and snapshot envelopes in both wire formats. The JSON shapes are
//! the public contract in docs/json-contract.md; change them only with that document.

use super::aggregate::Aggregate;
use crate::codec::proto::envelope as pb;
use crate::codec::{CodecError, Format};
use prost::Message;
use serde::{Deserialize, Serialize};

/// A decoded command with the engine's envelope fields.
#[derive(Debug)]
pub struct Command<C> {
    pub command_id: String,
    pub aggregate_id: String,
    pub expected_version: Option<u64>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub body: C,
}

#[derive(Deserialize)]
struct JsonCommand<C> {
    command_id: String,
    aggregate_id: String,
    #[serde(default)]
    expected_version: Option<u64>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(flatten)]
    body: C,
}

pub fn decode_command<A: Aggregate>(
    format: Format,
    bytes: &[u8],
) -> Result<Command<A::Command>, CodecError> {
    let cmd = match format {
        Format::Json => {
            let j: JsonCommand<A::Command> = serde_json::from_slice(bytes)?;
            Command {
                command_id: j.command_id,
                aggregate_id: j.aggregate_id,
                expected_version: j.expected_version,
                correlation_id: j.correlation_id,
                reply_to: j.reply_to,
                body: j.body,
            }
        }
        Format::Protobuf => {
            let e = pb::CommandEnvelope::decode(bytes)?;
            let body = A::command_from_proto(&e.r#type, &e.payload).map_err(CodecError::Schema)?;
            Command {
                command_id: e.command_id,
                aggregate_id: e.aggregate_id,
                expected_version: e.expected_version,
                correlation_id: Some(e.correlation_id).filter(|s| !s.is_empty()),
                reply_to: Some(e.reply_to).filter(|s| !s.is_empty()),
                body,
            }
        }
    };
    if cmd.command_id.is_empty() {
        return Err(CodecError::Schema("command_id is empty".into()));
    }
    if cmd.aggregate_id.is_empty() {
        return Err(CodecError::Schema("aggregate_id is empty".into()));
    }
    Ok(cmd)
}

#[derive(Serialize)]
struct JsonEvent<'a, E> {
    aggregate_id: &'a str,
    version: u64,
    #[serde(flatten)]
    event: &'a E,
}

pub fn encode_event<A: Aggregate>(
    format: Format,
    aggregate_id: &str,
    version: u64,
    event: &A::Event,
) -> Vec<u8> {
    match format {
        Format::Json => serde_json::to_vec(&JsonEvent { aggregate_id, version, event })
            .expect("events serialize: Aggregate::Event is Serialize"),
        Format::Protobuf => pb::EventEnvelope {
            aggregate_id: aggregate_id.into(),
            version,
            r#type: A::event_type(event).into(),
            payload: A::event_to_proto(event),
        }
        .encode_to_vec(),
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Accepted,
    Rejected,
    WrongExpectedVersion,
    Duplicate,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::WrongExpectedVersion => "wrong_expected_version",
            Outcome::Duplicate => "duplicate",
        }
    }

    fn to_pb(self) -> pb::Outcome {
        match self {
            Outcome::Accepted => pb::Outcome::Accepted,
            Outcome::Rejected => pb::Outcome::Rejected,
            Outcome::WrongExpectedVersion => pb::Outcome::WrongExpectedVersion,
            Outcome::Duplicate => pb::Outcome::Duplicate,
        }
    }

    fn from_pb(o: i32) -> Option<Self> {
        match pb::Outcome::try_from(o).ok()? {
            pb::Outcome::Accepted => Some(Outcome::Accepted),
            pb::Outcome::Rejected => Some(Outcome::Rejected),
            pb::Outcome::WrongExpectedVersion => Some(Outcome::WrongExpectedVersion),
            pb::Outcome::Duplicate => Some(Outcome::Duplicate),
            pb::Outcome::Unspecified => None,
        }
    }
}

/// The reply to one command; JSON field names are the public contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub command_id: String,
    pub aggregate_id: String,
    pub outcome: Outcome,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_outcome: Option<Outcome>,
}

pub fn encode_reply(format: Format, r: &Reply) -> Vec<u8> {
    match format {
        Format::Json => serde_json::to_vec(r).expect("replies serialize"),
        Format::Protobuf => pb::Reply {
            command_id: r.command_id.clone(),
            aggregate_id: r.aggregate_id.clone(),
            outcome: r.outcome.to_pb() as i32,
            version: r.version,
            reason: r.reason.clone().unwrap_or_default(),
            expected: r.expected,
            actual: r.actual.unwrap_or_default(),
            original_outcome: r.original_outcome.map(|o| o.to_pb() as i32).unwrap_or_default(),
            event_count: r.event_count.unwrap_or_default(),
        }
        .encode_to_vec(),
    }
}

pub fn decode_reply(format: Format, bytes: &[u8]) -> Result<Reply, CodecError> {
    match format {
        Format::Json => Ok(serde_json::from_slice(bytes)?),
        Format::Protobuf => {
            let p = pb::Reply::decode(bytes)?;
            let outcome = Outcome::from_pb(p.outcome)
                .ok_or_else(|| CodecError::Schema("reply without outcome".into()))?;
            Ok(Reply {
                command_id: p.command_id,
                aggregate_id: p.aggregate_id,
                outcome,
                version: p.version,
                event_count: (outcome == Outcome::Accepted).then_some(p.event_count),
                reason: Some(p.reason).filter(|s| !s.is_empty()),
                expected: p.expected,
                actual: (outcome == Outcome::WrongExpectedVersion).then_some(p.actual),
                original_outcome: Outcome::from_pb(p.original_outcome),
            })
        }
    }
}

/// A command this aggregate already answered (the dedup window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub command_id: String,
    pub outcome: Outcome,
    pub version: u64,
    pub reason: Option<String>,
}

/// The stored snapshot of one aggregate: always a protobuf `SnapshotEnvelope`; the state
/// inside is in the store's configured format.
#[derive(Debug, Clone)]
pub struct Snapshot<S> {
    pub version: u64,
    pub state: S,
    pub source_offset: i64,
    pub recent: Vec<Processed>,
}

/// Schema version of snapshot states this build writes.
pub const STATE_SCHEMA_VERSION: u32 = 1;

pub fn encode_snapshot<A: Aggregate>(format: Format, s: &Snapshot<A::State>) -> Vec<u8> {
    let state = match format {
        Format::Json => serde_json::to_vec(&s.state).expect("states serialize"),
        Format::Protobuf => A::state_to_proto(&s.state),
    };
    pb::SnapshotEnvelope {
        version: s.version,
        state,
        source_offset: s.source_offset,
        schema_version: STATE_SCHEMA_VERSION,
        recent: s
            .recent
            .iter()
            .map(|p| pb::ProcessedCommand {
                command_id: p.command_id.clone(),
                outcome: p.outcome.to_pb() as i32,
                version: p.version,
                reason: p.reason.clone().unwrap_or_default(),
            })
            .collect(),
    }
    .encode_to_vec()
}

pub fn decode_snapshot<A: Aggregate>(
    format: Format,
    bytes: &[u8],
) -> Result<Snapshot<A::State>, CodecError> {
    let e = pb::SnapshotEnvelope::decode(bytes)?;
    let state = match format {
        Format::Json => serde_json::from_slice(&e.state)?,
        Format::Protobuf => A::state_from_proto(&e.state).map_err(CodecError::Schema)?,
    };
    let recent = e
        .recent
        .into_iter()
        .filter_map(|p| {
            Some(Processed {
                outcome: Outcome::from_pb(p.outcome)?,
                command_id: p.command_id,
                version: p.version,
                reason: Some(p.reason).filter(|s| !s.is_empty()),
            })
        })
        .collect();
    Ok(Snapshot { version: e.version, state, source_offset: e.source_offset, recent })
}
