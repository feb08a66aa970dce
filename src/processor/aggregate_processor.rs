//! Runs one command through an aggregate: load the snapshot (overlay first, then RocksDB),
//! dedup by command id, check the expected version, `decide`, `evolve`, then write the
//! events, the new snapshot (store + changelog) and the reply. All of it lands in the task's
//! open transaction; none of it is visible until that commits.

use super::aggregate::{Aggregate, Rejection};
use super::wire::{self, Outcome, Processed, Reply, Snapshot};
use super::{dead_letter, Context, ProcessError, Processor, ValueRenderer};
use crate::codec::Format;
use crate::record::{header, Headers, InRecord, OutRecord};
use std::marker::PhantomData;

/// Where an aggregate's records go and in which formats. Built from the topology.
#[derive(Debug, Clone)]
pub struct AggregateSettings {
    pub store: String,
    pub command_format: Format,
    pub event_format: Format,
    pub reply_format: Format,
    pub store_format: Format,
    pub events_topic: String,
    pub reply_topic: String,
    pub dead_letter_topic: String,
    /// How many answered command ids each aggregate remembers for dedup.
    pub dedup_window: usize,
}

pub struct AggregateProcessor<A> {
    settings: AggregateSettings,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> AggregateProcessor<A> {
    pub fn new(settings: AggregateSettings) -> Self {
        Self { settings, _aggregate: PhantomData }
    }

    fn load(&self, ctx: &Context<'_>, id: &str) -> Result<Snapshot<A::State>, ProcessError> {
        match ctx.get(id.as_bytes())? {
            None => Ok(Snapshot { version: 0, state: A::State::default(), source_offset: -1, recent: vec![] }),
            Some(bytes) => wire::decode_snapshot::<A>(self.settings.store_format, &bytes).map_err(|e| {
                ProcessError::CorruptSnapshot {
                    store: self.settings.store.clone(),
                    key: id.to_string(),
                    reason: e.to_string(),
                }
            }),
        }
    }

    fn reply(&self, ctx: &mut Context<'_>, record: &InRecord, cmd: &wire::Command<A::Command>, reply: Reply) {
        metrics::counter!("millrace_commands_total", "outcome" => reply.outcome.as_str()).increment(1);
        let mut headers = Headers::default();
        let correlation = record.headers.get(header::CORRELATION_ID).map(<[u8]>::to_vec)
            .or_else(|| cmd.correlation_id.clone().map(String::into_bytes));
        if let Some(c) = correlation {
            headers.insert(header::CORRELATION_ID, c);
        }
        let topic = record.headers.get_str(header::REPLY_TO).map(str::to_string)
            .or_else(|| cmd.reply_to.clone())
            .unwrap_or_else(|| self.settings.reply_topic.clone());
        ctx.out.send(OutRecord {
            topic,
            partition: None,
            key: Some(reply.command_id.clone().into_bytes()),
            value: Some(wire::encode_reply(self.settings.reply_format, &reply)),
            headers,
            timestamp: record.timestamp,
        });
    }

    fn remember(&self, snap: &mut Snapshot<A::State>, reply: &Reply) {
        snap.recent.push(Processed {
            command_id: reply.command_id.clone(),
            outcome: reply.outcome,
            version: reply.version,
            reason: reply.reason.clone(),
        });
        let excess = snap.recent.len().saturating_sub(self.settings.dedup_window.max(1));
        snap.recent.drain(..excess);
    }
}

impl<A: Aggregate> Processor for AggregateProcessor<A> {
    fn process(&mut self, record: &InRecord, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let dlq = |ctx: &mut Context<'_>, reason: &str| {
            ctx.out.send(dead_letter(record, reason, &self.settings.dead_letter_topic));
        };
        let Some(value) = record.value.as_deref() else {
            dlq(ctx, "command record has no value");
            return Ok(());
        };
        let cmd = match wire::decode_command::<A>(self.settings.command_format, value) {
            Ok(c) => c,
            Err(e) => {
                dlq(ctx, &format!("cannot decode {} command: {e}", self.settings.command_format));
                return Ok(());
            }
        };
        // The key decides the partition, and so which task owns the aggregate. A key that
        // disagrees with the envelope would let two tasks write one aggregate.
        if record.key.as_deref() != Some(cmd.aggregate_id.as_bytes()) {
            dlq(ctx, &format!("record key does not equal aggregate_id {:?}", cmd.aggregate_id));
            return Ok(());
        }

        let id = cmd.aggregate_id.as_str();
        let mut snap = self.load(ctx, id)?;
        let base = Reply {
            command_id: cmd.command_id.clone(),
            aggregate_id: id.to_string(),
            outcome: Outcome::Accepted,
            version: snap.version,
            event_count: None,
            reason: None,
            expected: None,
            actual: None,
            original_outcome: None,
        };

        if let Some(prev) = snap.recent.iter().find(|p| p.command_id == cmd.command_id) {
            let reply = Reply {
                outcome: Outcome::Duplicate,
                version: prev.version,
                reason: prev.reason.clone(),
                original_outcome: Some(prev.outcome),
                ..base
            };
            self.reply(ctx, record, &cmd, reply);
            return Ok(());
        }

        let reply = match cmd.expected_version {
            Some(expected) if expected != snap.version => Reply {
                outcome: Outcome::WrongExpectedVersion,
                expected: Some(expected),
                actual: Some(snap.version),
                ..base
            },
            _ => match A::decide(&snap.state, &cmd.body) {
                Err(Rejection::Malformed(reason)) => {
                    dlq(ctx, &format!("malformed command: {reason}"));
                    return Ok(());
                }
                Err(Rejection::Rule(reason)) => {
                    Reply { outcome: Outcome::Rejected, reason: Some(reason), ..base }
                }
                Ok(events) => {
                    for event in &events {
                        snap.version += 1;
                        snap.state = A::evolve(std::mem::take(&mut snap.state), event);
                        let mut headers = Headers::default();
                        headers.insert(header::VERSION, snap.version.to_string());
                        headers.insert(header::SCHEMA_VERSION, A::EVENT_SCHEMA_VERSION.to_string());
                        headers.insert(header::COMMAND_ID, cmd.command_id.as_bytes());
                        ctx.out.send(OutRecord {
                            topic: self.settings.events_topic.clone(),
                            partition: None,
                            key: Some(id.as_bytes().to_vec()),
                            value: Some(wire::encode_event::<A>(
                                self.settings.event_format,
                                id,
                                snap.version,
                                event,
                            )),
                            headers,
                            timestamp: record.timestamp,
                        });
                    }
                    metrics::counter!("millrace_events_total").increment(events.len() as u64);
                    Reply {
                        version: snap.version,
                        event_count: Some(events.len() as u32),
                        ..base
                    }
                }
            },
        };
        self.remember(&mut snap, &reply);
        snap.source_offset = record.offset;
        let bytes = wire::encode_snapshot::<A>(self.settings.store_format, &snap);
        ctx.put(id.as_bytes(), Some(bytes));
        self.reply(ctx, record, &cmd, reply);
        Ok(())
    }
}

/// Renders this aggregate's snapshots for the query server.
pub struct SnapshotRenderer<A> {
    pub format: Format,
    pub _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> ValueRenderer for SnapshotRenderer<A> {
    fn render(&self, value: &[u8]) -> Result<serde_json::Value, String> {
        let snap = wire::decode_snapshot::<A>(self.format, value).map_err(|e| e.to_string())?;
        Ok(serde_json::json!({
            "version": snap.version,
            "state": serde_json::to_value(&snap.state).map_err(|e| e.to_string())?,
        }))
    }
}
