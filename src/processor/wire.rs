//! Command, event, reply and snapshot envelopes in both wire formats. The JSON shapes are
//! the public contract in docs/json-contract.md; change them only with that document.

use super::aggregate::Aggregate;
pub use super::dedup_window::DedupWindow;
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

impl<C> Command<C> {
    pub fn envelope(&self) -> Envelope {
        Envelope {
            command_id: self.command_id.clone(),
            aggregate_id: self.aggregate_id.clone(),
            correlation_id: self.correlation_id.clone(),
            reply_to: self.reply_to.clone(),
        }
    }
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

/// The envelope of a command whose body may not decode: enough to answer it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Envelope {
    pub command_id: String,
    pub aggregate_id: String,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
}

/// Reads only the envelope fields of a command, ignoring its body: a command whose
/// payload or type is wrong still has a sender waiting for an answer. None when not even
/// the command id and aggregate id can be read (those bytes can only be dead-lettered).
pub fn decode_envelope(format: Format, bytes: &[u8]) -> Option<Envelope> {
    let e = match format {
        Format::Json => serde_json::from_slice::<Envelope>(bytes).ok()?,
        Format::Protobuf => {
            let e = pb::CommandEnvelope::decode(bytes).ok()?;
            Envelope {
                command_id: e.command_id,
                aggregate_id: e.aggregate_id,
                correlation_id: Some(e.correlation_id).filter(|s| !s.is_empty()),
                reply_to: Some(e.reply_to).filter(|s| !s.is_empty()),
            }
        }
    };
    (!e.command_id.is_empty() && !e.aggregate_id.is_empty()).then_some(e)
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
    /// The command cannot run: undecodable payload, unknown type, or `Rejection::Malformed`.
    Invalid,
    /// The engine could not run it: an unreadable snapshot, an output a topic refuses.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::WrongExpectedVersion => "wrong_expected_version",
            Outcome::Duplicate => "duplicate",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
        }
    }

    pub(super) fn to_pb(self) -> pb::Outcome {
        match self {
            Outcome::Accepted => pb::Outcome::Accepted,
            Outcome::Rejected => pb::Outcome::Rejected,
            Outcome::WrongExpectedVersion => pb::Outcome::WrongExpectedVersion,
            Outcome::Duplicate => pb::Outcome::Duplicate,
            Outcome::Invalid => pb::Outcome::Invalid,
            Outcome::Failed => pb::Outcome::Failed,
        }
    }

    pub(super) fn from_pb(o: i32) -> Option<Self> {
        match pb::Outcome::try_from(o).ok()? {
            pb::Outcome::Accepted => Some(Outcome::Accepted),
            pb::Outcome::Rejected => Some(Outcome::Rejected),
            pb::Outcome::WrongExpectedVersion => Some(Outcome::WrongExpectedVersion),
            pb::Outcome::Duplicate => Some(Outcome::Duplicate),
            pb::Outcome::Invalid => Some(Outcome::Invalid),
            pb::Outcome::Failed => Some(Outcome::Failed),
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
    /// The commands answered last (`dedup_window` of them).
    pub recent: DedupWindow,
    /// While the aggregate waits for another table (`Aggregate::awaiting`): the event time
    /// the wait times out.
    pub await_deadline: Option<i64>,
}

/// Written as prost writes `SnapshotEnvelope` (fields in order, zero values left out),
/// with the dedup window's entries copied as they are.
pub fn encode_snapshot<A: Aggregate>(format: Format, s: &Snapshot<A::State>) -> Vec<u8> {
    use crate::codec::protobuf_wire::put_varint;
    let state = match format {
        Format::Json => serde_json::to_vec(&s.state).expect("states serialize"),
        Format::Protobuf => A::state_to_proto(&s.state),
    };
    let mut out = Vec::with_capacity(state.len() + s.recent.encoded_len() + 40);
    let varint_field = |out: &mut Vec<u8>, key: u8, v: u64| {
        if v != 0 {
            out.push(key);
            put_varint(out, v);
        }
    };
    varint_field(&mut out, 1 << 3, s.version);
    if !state.is_empty() {
        out.push(2 << 3 | 2);
        put_varint(&mut out, state.len() as u64);
        out.extend_from_slice(&state);
    }
    varint_field(&mut out, 3 << 3, s.source_offset as u64);
    varint_field(&mut out, 4 << 3, u64::from(A::STATE_SCHEMA_VERSION));
    s.recent.write(&mut out);
    if let Some(deadline) = s.await_deadline {
        // Optional: written even when 0.
        out.push(6 << 3);
        put_varint(&mut out, deadline as u64);
    }
    out
}

/// Reads a `SnapshotEnvelope`; the dedup window's entries are kept as they are, not
/// decoded (see `DedupWindow`).
pub fn decode_snapshot<A: Aggregate>(
    format: Format,
    bytes: &[u8],
) -> Result<Snapshot<A::State>, CodecError> {
    let mut recent = DedupWindow::default();
    let e = read_envelope(bytes, |record| recent.push_record(record))?;
    let state = decode_state::<A>(format, e.schema_version, e.state)?;
    Ok(Snapshot { version: e.version, state, source_offset: e.source_offset, recent, await_deadline: e.await_deadline })
}

/// What a reader of a snapshot sees: its version, state and deadline, not its dedup
/// window or where it was read from.
pub struct SnapshotView<S> {
    pub version: u64,
    pub state: S,
    pub await_deadline: Option<i64>,
}

/// A snapshot without its dedup window, whose bytes are not even copied: what the query
/// server and the indexes read (the latter once per value in a full restore).
pub fn decode_snapshot_view<A: Aggregate>(format: Format, bytes: &[u8]) -> Result<SnapshotView<A::State>, CodecError> {
    let e = read_envelope(bytes, |_| {})?;
    Ok(SnapshotView { version: e.version, state: decode_state::<A>(format, e.schema_version, e.state)?, await_deadline: e.await_deadline })
}

/// The fields of a `SnapshotEnvelope` but its dedup window, the state still encoded.
struct SnapshotFields<'a> {
    version: u64,
    state: &'a [u8],
    source_offset: i64,
    schema_version: u32,
    await_deadline: Option<i64>,
}

/// Reads an envelope, handing each dedup window record (key, length, entry) to `recent`
/// as it is. Unknown fields are skipped, as prost does.
fn read_envelope<'a>(bytes: &'a [u8], mut recent: impl FnMut(&'a [u8])) -> Result<SnapshotFields<'a>, CodecError> {
    use crate::codec::protobuf_wire::{key, length_delimited, skip, varint};
    let mut e = SnapshotFields { version: 0, state: &[], source_offset: 0, schema_version: 0, await_deadline: None };
    let mut buf = bytes;
    while !buf.is_empty() {
        let start = buf;
        let (field, wire_type) = key(&mut buf)?;
        match (field, wire_type) {
            (1, 0) => e.version = varint(&mut buf)?,
            (2, 2) => e.state = length_delimited(&mut buf)?,
            (3, 0) => e.source_offset = varint(&mut buf)? as i64,
            (4, 0) => e.schema_version = varint(&mut buf)? as u32,
            (5, 2) => {
                length_delimited(&mut buf)?;
                recent(&start[..start.len() - buf.len()]);
            }
            (6, 0) => e.await_deadline = Some(varint(&mut buf)? as i64),
            // A known field of another type is not a snapshot (prost refuses it too).
            (1..=6, _) => return Err(CodecError::Wire(format!("field {field} has wire type {wire_type}"))),
            _ => skip(&mut buf, wire_type)?,
        }
    }
    Ok(e)
}

fn decode_state<A: Aggregate>(format: Format, schema_version: u32, state: &[u8]) -> Result<A::State, CodecError> {
    Ok(match format {
        // Snapshots written before schema versions existed carry 0: treat them as 1.
        Format::Json if schema_version.max(1) < A::STATE_SCHEMA_VERSION => {
            let old: serde_json::Value = serde_json::from_slice(state)?;
            let new = A::upcast_state(schema_version.max(1), old).map_err(CodecError::Schema)?;
            serde_json::from_value(new)?
        }
        Format::Json => serde_json::from_slice(state)?,
        Format::Protobuf => A::state_from_proto(state).map_err(CodecError::Schema)?,
    })
}

/// A decoded event with its envelope fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<E> {
    pub aggregate_id: String,
    pub version: u64,
    pub body: E,
}

/// Reads an event from the events topic. `schema_version` is the record's
/// `millrace.schema-version` header (absent: 1); older JSON events go through
/// `Aggregate::upcast_event` first.
pub fn decode_event<A: Aggregate>(
    format: Format,
    bytes: &[u8],
    schema_version: Option<u32>,
) -> Result<Event<A::Event>, CodecError> {
    match format {
        Format::Json => {
            let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
            let obj = v.as_object_mut().ok_or_else(|| CodecError::Schema("event is not a JSON object".into()))?;
            let aggregate_id = obj.remove("aggregate_id").and_then(|x| x.as_str().map(str::to_string))
                .ok_or_else(|| CodecError::Schema("event without aggregate_id".into()))?;
            let version = obj.remove("version").and_then(|x| x.as_u64())
                .ok_or_else(|| CodecError::Schema("event without version".into()))?;
            let written = schema_version.unwrap_or(1);
            let body = if written < A::EVENT_SCHEMA_VERSION {
                A::upcast_event(written, v).map_err(CodecError::Schema)?
            } else {
                v
            };
            Ok(Event { aggregate_id, version, body: serde_json::from_value(body)? })
        }
        Format::Protobuf => Err(CodecError::Schema(
            "reading protobuf events back needs the aggregate's event decoder; not supported yet".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::customer::{Customer, CustomerAggregate, CustomerCommand, Status};
    use proptest::prelude::*;

    fn arb_outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Accepted),
            Just(Outcome::Rejected),
            Just(Outcome::WrongExpectedVersion),
            Just(Outcome::Duplicate),
            Just(Outcome::Invalid),
            Just(Outcome::Failed)
        ]
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        ("[a-z0-9-]{1,12}", "[a-z0-9-]{1,12}", arb_outcome(), any::<u32>(), "[ -~]{1,20}", any::<u32>(), arb_outcome())
            .prop_map(|(c, a, outcome, v, reason, n, orig)| {
                let version = v as u64;
                let base = Reply {
                    command_id: c,
                    aggregate_id: a,
                    outcome,
                    version,
                    event_count: None,
                    reason: None,
                    expected: None,
                    actual: None,
                    original_outcome: None,
                };
                match outcome {
                    Outcome::Accepted => Reply { event_count: Some(n % 10), ..base },
                    Outcome::Rejected | Outcome::Invalid | Outcome::Failed => Reply { reason: Some(reason), ..base },
                    Outcome::WrongExpectedVersion => Reply { expected: Some(version + 1), actual: Some(version), ..base },
                    Outcome::Duplicate if orig == Outcome::Duplicate => Reply { original_outcome: Some(Outcome::Accepted), ..base },
                    Outcome::Duplicate => Reply { original_outcome: Some(orig), ..base },
                }
            })
    }

    proptest! {
        #[test]
        fn replies_round_trip_in_both_formats(r in arb_reply()) {
            for f in [Format::Json, Format::Protobuf] {
                prop_assert_eq!(&decode_reply(f, &encode_reply(f, &r)).unwrap(), &r);
            }
        }

        #[test]
        fn snapshots_round_trip_in_both_formats(name in "[ -~]{0,30}", email in "[ -~]{0,30}", version in any::<u32>(),
                                                 deleted in any::<bool>(), ids in prop::collection::vec("[a-z0-9]{1,8}", 0..5),
                                                 await_deadline in proptest::option::of(any::<i64>())) {
            let state = Customer { name, email, status: if deleted { Status::Deleted } else { Status::Active } };
            let snap = Snapshot {
                version: version as u64,
                state,
                source_offset: 7,
                recent: ids.into_iter().map(|c| Processed { command_id: c, outcome: Outcome::Accepted, version: 1, reason: None }).collect::<Vec<_>>().into(),
                await_deadline,
            };
            for f in [Format::Json, Format::Protobuf] {
                let back = decode_snapshot::<CustomerAggregate>(f, &encode_snapshot::<CustomerAggregate>(f, &snap)).unwrap();
                prop_assert_eq!(&back.state, &snap.state);
                prop_assert_eq!(back.version, snap.version);
                prop_assert_eq!(&back.recent, &snap.recent);
                prop_assert_eq!(back.await_deadline, snap.await_deadline);
            }
        }

        /// The envelope is written byte for byte as prost writes `SnapshotEnvelope`, and
        /// what prost writes (unknown fields included) reads back the same.
        #[test]
        fn snapshot_envelopes_match_the_generated_message(version in any::<u64>(), source_offset in any::<i64>(),
                                                           ids in prop::collection::vec(("[a-z0-9-]{0,40}", any::<u64>(), proptest::option::of("[ -~]{1,20}")), 0..40),
                                                           await_deadline in proptest::option::of(any::<i64>()), name in "[ -~]{0,30}") {
            let recent: Vec<Processed> = ids.into_iter().map(|(c, v, r)| Processed { command_id: c, outcome: Outcome::Rejected, version: v, reason: r }).collect();
            let snap = Snapshot { version, state: Customer { name, email: String::new(), status: Status::Active }, source_offset, recent: recent.clone().into(), await_deadline };
            for f in [Format::Json, Format::Protobuf] {
                let ours = encode_snapshot::<CustomerAggregate>(f, &snap);
                let theirs = pb::SnapshotEnvelope {
                    version,
                    state: match f { Format::Json => serde_json::to_vec(&snap.state).unwrap(), Format::Protobuf => CustomerAggregate::state_to_proto(&snap.state) },
                    source_offset,
                    schema_version: CustomerAggregate::STATE_SCHEMA_VERSION,
                    recent: recent.iter().map(super::super::dedup_window::to_pb).collect(),
                    await_deadline,
                }.encode_to_vec();
                prop_assert_eq!(&ours, &theirs);
                // An unknown field (a later version's) is skipped.
                let mut extended = theirs.clone();
                extended.extend_from_slice(&[15 << 3 | 2, 3, b'a', b'b', b'c', 14 << 3 | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
                let back = decode_snapshot::<CustomerAggregate>(f, &extended).unwrap();
                prop_assert_eq!((back.version, back.source_offset, back.await_deadline), (version, source_offset, await_deadline));
                prop_assert_eq!(&back.state, &snap.state);
                // Every id is found, long ones (kept as digests) included, with what the
                // first entry for it says.
                for p in &recent {
                    let first = recent.iter().find(|q| q.command_id == p.command_id);
                    prop_assert_eq!(back.recent.find(&p.command_id), first.cloned());
                }
                prop_assert_eq!(encode_snapshot::<CustomerAggregate>(f, &back), ours);
            }
        }

        /// Bytes that are not a snapshot are refused, never read as an empty one.
        #[test]
        fn a_known_field_of_the_wrong_type_is_refused(field in 1u8..=6) {
            let wire_type = if matches!(field, 2 | 5) { 0 } else { 2 };
            let bytes = [field << 3 | wire_type, 1, 1];
            prop_assert!(decode_snapshot::<CustomerAggregate>(Format::Protobuf, &bytes).is_err());
        }

        #[test]
        fn json_commands_decode_to_what_was_sent(name in "[ -~]{0,30}", email in "[ -~]{0,30}", expected in proptest::option::of(any::<u32>())) {
            let bytes = serde_json::to_vec(&serde_json::json!({
                "command_id": "c", "aggregate_id": "a", "expected_version": expected,
                "type": "UpdateCustomer", "payload": {"name": name, "email": email},
            })).unwrap();
            let c = decode_command::<CustomerAggregate>(Format::Json, &bytes).unwrap();
            prop_assert_eq!(c.expected_version, expected.map(u64::from));
            prop_assert_eq!(c.body, CustomerCommand::UpdateCustomer { name, email });
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_command_decoders(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_command::<CustomerAggregate>(Format::Json, &bytes);
            let _ = decode_command::<CustomerAggregate>(Format::Protobuf, &bytes);
            let _ = decode_envelope(Format::Json, &bytes);
            let _ = decode_envelope(Format::Protobuf, &bytes);
        }

        /// Whatever the body, a readable envelope is read: an unknown type or a payload of
        /// the wrong shape still leaves the sender something to be answered on.
        #[test]
        fn envelopes_read_past_any_body(id in "[a-z0-9]{1,8}", agg in "[a-z0-9]{1,8}", ty in "[A-Za-z]{0,12}",
                                        payload in prop_oneof![Just(serde_json::json!(null)), Just(serde_json::json!(7)),
                                                               Just(serde_json::json!({"x": [1]}))]) {
            let bytes = serde_json::to_vec(&serde_json::json!({
                "command_id": id, "aggregate_id": agg, "type": ty, "payload": payload, "reply_to": "r",
            })).unwrap();
            let e = decode_envelope(Format::Json, &bytes).unwrap();
            prop_assert_eq!((e.command_id, e.aggregate_id, e.reply_to), (id, agg, Some("r".to_string())));
        }
    }
}

#[cfg(test)]
mod evolution {
    use super::*;
    use crate::domain::customer::{CustomerAggregate, CustomerCommand};
    use prost::Message;

    /// A newer writer added fields to the envelope and the payload: this build skips them.
    #[test]
    fn unknown_protobuf_fields_are_tolerated() {
        let payload = {
            let mut b = crate::codec::proto::customer::CreateCustomer { name: "Ada".into(), email: "a@x".into() }.encode_to_vec();
            b.extend([0xA0, 0x06, 0x01]); // field 100, varint 1: unknown to this build
            b
        };
        let mut bytes = pb::CommandEnvelope {
            command_id: "c".into(),
            aggregate_id: "a".into(),
            expected_version: None,
            r#type: "CreateCustomer".into(),
            payload,
            correlation_id: String::new(),
            reply_to: String::new(),
        }
        .encode_to_vec();
        bytes.extend([0xBA, 0x06, 0x02, b'h', b'i']); // field 103, length-delimited "hi"
        let c = decode_command::<CustomerAggregate>(Format::Protobuf, &bytes).unwrap();
        assert_eq!(c.body, CustomerCommand::CreateCustomer { name: "Ada".into(), email: "a@x".into() });
    }
}
