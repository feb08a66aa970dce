//! Runs one command through an aggregate: load the snapshot (overlay first, then RocksDB),
//! dedup by command id, check the expected version, `decide`, `evolve`, then write the
//! events, the new snapshot (store + changelog) and the reply. All of it lands in the task's
//! open transaction; none of it is visible until that commits.
//!
//! With `awaits`, this is also the stash: an aggregate whose state waits for keys of a
//! global table (`Aggregate::awaiting`) keeps the deadline in its snapshot, and is checked
//! again as event time moves (each record of the partition) and as the wall clock moves
//! (punctuation). The decision is a function of the data, not of timing: the wait succeeds
//! if every key exists in the table as of the deadline, and fails otherwise. A replay, with
//! the table already loaded, decides as live processing did.

use super::aggregate::{Aggregate, Rejection};
use super::wire::{self, Outcome, Processed, Reply, Snapshot};
use super::{dead_letter, dead_letter_as, Context, Lookup, ProcessError, Processor, ValueRenderer};
use crate::codec::Format;
use crate::record::{header, Headers, InRecord, OutRecord};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

/// The index an aggregate store keeps over the aggregates that wait (value `yes`), so the
/// pending set is found without scanning the store.
pub const AWAITING_INDEX: &str = "millrace.awaiting";

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
    pub awaits: Option<AwaitSettings>,
    /// Keep each aggregate's events in the store (`GET /aggregates/{type}/{id}/events`).
    pub event_history: bool,
    /// The instance's list of keys whose snapshot cannot be read.
    pub quarantine: Arc<super::quarantine::Quarantine>,
}

/// The table an aggregate's waits look in, and how long they last.
#[derive(Clone)]
pub struct AwaitSettings {
    pub table_name: String,
    pub table: Arc<dyn Lookup>,
    /// Event time from the start of a wait to its deadline.
    pub timeout_ms: i64,
}

impl std::fmt::Debug for AwaitSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitSettings").field("table", &self.table_name).field("timeout_ms", &self.timeout_ms).finish()
    }
}

/// Why a command did not run.
enum Refused {
    /// The command itself is wrong (`decide` called it malformed).
    Invalid { version: u64, reason: String },
    /// The aggregate's snapshot cannot be read.
    Failed(String),
}

impl Refused {
    fn reason(&self) -> &str {
        match self {
            Refused::Invalid { reason, .. } | Refused::Failed(reason) => reason,
        }
    }
}

/// Where a reply goes besides the record's own headers (which take precedence).
#[derive(Clone, Copy)]
struct ReplyTo<'a> {
    correlation_id: Option<&'a str>,
    reply_to: Option<&'a str>,
}

impl<'a, C> From<&'a wire::Command<C>> for ReplyTo<'a> {
    fn from(c: &'a wire::Command<C>) -> Self {
        Self { correlation_id: c.correlation_id.as_deref(), reply_to: c.reply_to.as_deref() }
    }
}

/// Where a command came from: a record of the command topic, or the stash.
struct Source<'a> {
    headers: &'a Headers,
    offset: Option<i64>,
    timestamp: Option<i64>,
    internal: bool,
}

pub struct AggregateProcessor<A> {
    settings: AggregateSettings,
    /// Aggregates that wait, with their deadline: a cache of the `millrace.awaiting` index
    /// plus this transaction's changes. Dropped on abort and reloaded from the store.
    pending: Option<BTreeMap<String, i64>>,
    /// Largest record time seen by this task.
    stream_time: i64,
    /// Keys whose snapshot could not be read, as far as this task has seen: each command
    /// for one is answered `failed`. Mirrored in the instance's `settings.quarantine`.
    quarantined: std::collections::HashSet<String>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Drop for AggregateProcessor<A> {
    fn drop(&mut self) {
        // The task closes: its keys are no longer this instance's to count.
        for key in &self.quarantined {
            self.settings.quarantine.remove(&self.settings.store, key);
        }
    }
}

impl<A: Aggregate> AggregateProcessor<A> {
    pub fn new(settings: AggregateSettings) -> Self {
        Self { settings, pending: None, stream_time: i64::MIN, quarantined: Default::default(), _aggregate: PhantomData }
    }

    fn load(&self, ctx: &Context<'_>, id: &str) -> Result<Snapshot<A::State>, ProcessError> {
        match ctx.get(id.as_bytes())? {
            None => Ok(Snapshot { version: 0, state: A::State::default(), source_offset: -1, recent: Default::default(), await_deadline: None }),
            Some(bytes) => wire::decode_snapshot::<A>(self.settings.store_format, &bytes).map_err(|e| {
                ProcessError::CorruptSnapshot {
                    store: self.settings.store.clone(),
                    key: id.to_string(),
                    reason: e.to_string(),
                }
            }),
        }
    }

    fn reply(&self, ctx: &mut Context<'_>, source: &Source<'_>, to: ReplyTo<'_>, reply: Reply) {
        metrics::counter!("millrace_commands_total", "outcome" => reply.outcome.as_str()).increment(1);
        let mut headers = Headers::default();
        let correlation = source.headers.get(header::CORRELATION_ID).map(<[u8]>::to_vec)
            .or_else(|| to.correlation_id.map(|c| c.as_bytes().to_vec()));
        if let Some(c) = correlation {
            headers.insert(header::CORRELATION_ID, c);
        }
        let topic = source.headers.get_str(header::REPLY_TO).map(str::to_string)
            .or_else(|| to.reply_to.map(str::to_string))
            .unwrap_or_else(|| self.settings.reply_topic.clone());
        ctx.out.send(OutRecord {
            topic,
            partition: None,
            key: Some(reply.command_id.clone().into_bytes()),
            value: Some(wire::encode_reply(self.settings.reply_format, &reply)),
            headers,
            timestamp: source.timestamp,
        });
    }

    /// Answers a command that cannot run (`invalid`, with the reason) and dead-letters the
    /// original, in the same transaction: the sender is never left waiting, and nothing
    /// is lost. The snapshot is not touched.
    fn invalid(&self, ctx: &mut Context<'_>, record: &InRecord, env: &wire::Envelope, version: u64, reason: String) {
        self.refuse(ctx, record, env, Outcome::Invalid, version, reason, "invalid_command");
    }

    /// Answers a command the engine could not run (`failed`: its snapshot cannot be read)
    /// and dead-letters it. The key stays quarantined while its snapshot is unreadable.
    fn failed(&mut self, ctx: &mut Context<'_>, record: &InRecord, env: &wire::Envelope, reason: String) {
        if self.quarantined.insert(env.aggregate_id.clone()) {
            tracing::error!(store = %self.settings.store, key = %env.aggregate_id, %reason,
                "snapshot cannot be read; key quarantined until its snapshot is deleted or repaired (docs/operations.md)");
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            self.settings.quarantine.add(&self.settings.store, &env.aggregate_id, &reason, now_ms);
        }
        self.refuse(ctx, record, env, Outcome::Failed, 0, reason, "failed");
    }

    #[allow(clippy::too_many_arguments)]
    fn refuse(&self, ctx: &mut Context<'_>, record: &InRecord, env: &wire::Envelope, outcome: Outcome, version: u64, reason: String, kind: &'static str) {
        let source = Source { headers: &record.headers, offset: Some(record.offset), timestamp: record.timestamp, internal: false };
        let to = ReplyTo { correlation_id: env.correlation_id.as_deref(), reply_to: env.reply_to.as_deref() };
        let reply = Reply {
            command_id: env.command_id.clone(),
            aggregate_id: env.aggregate_id.clone(),
            outcome,
            version,
            event_count: None,
            reason: Some(reason.clone()),
            expected: None,
            actual: None,
            original_outcome: None,
        };
        self.reply(ctx, &source, to, reply);
        ctx.out.send(dead_letter_as(record, &reason, &self.settings.dead_letter_topic, kind));
    }

    fn remember(&self, snap: &mut Snapshot<A::State>, reply: &Reply) {
        let p = Processed { command_id: reply.command_id.clone(), outcome: reply.outcome, version: reply.version, reason: reply.reason.clone() };
        snap.recent.remember(&p, self.settings.dedup_window);
    }

    /// Runs one decoded command. A command `decide` calls malformed comes back as
    /// `Err(reason)`, unanswered and unapplied: the caller answers it `invalid` and
    /// dead-letters it.
    fn handle(
        &mut self,
        ctx: &mut Context<'_>,
        source: &Source<'_>,
        cmd: &wire::Command<A::Command>,
    ) -> Result<Result<(), Refused>, ProcessError> {
        let id = cmd.aggregate_id.as_str();
        let mut snap = match self.load(ctx, id) {
            Ok(snap) => snap,
            // One unreadable snapshot must not stall its partition: the key is quarantined
            // (every command for it is answered `failed`) until an operator deletes or
            // repairs the snapshot; every other key goes on.
            Err(e @ ProcessError::CorruptSnapshot { .. }) => return Ok(Err(Refused::Failed(e.to_string()))),
            Err(e) => return Err(e),
        };
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

        if let Some(prev) = snap.recent.find(&cmd.command_id) {
            // The very record the snapshot was last written for, or an earlier one: the
            // input was read again from before a committed transaction (its offsets were
            // lost while its outputs committed: after a Kafka broker restart, a
            // transactional offset commit can be left pending and has to be dropped). Its
            // reply was committed with the state; it gets none again. A client's retry
            // comes as a new record, further on, and is answered `duplicate`.
            if !source.internal && source.offset.is_some_and(|o| o <= snap.source_offset) {
                metrics::counter!("millrace_replayed_records_total").increment(1);
                return Ok(Ok(()));
            }
            let reply = Reply {
                outcome: Outcome::Duplicate,
                version: prev.version,
                reason: prev.reason.clone(),
                original_outcome: Some(prev.outcome),
                ..base
            };
            self.reply(ctx, source, cmd.into(), reply);
            return Ok(Ok(()));
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
                    return Ok(Err(Refused::Invalid { version: snap.version, reason: format!("malformed command: {reason}") }))
                }
                Err(Rejection::Rule(reason)) => Reply { outcome: Outcome::Rejected, reason: Some(reason), ..base },
                Ok(events) => {
                    for event in &events {
                        snap.version += 1;
                        snap.state = A::evolve(std::mem::take(&mut snap.state), event);
                        if self.settings.event_history {
                            ctx.put_event(id.as_bytes(), snap.version, wire::encode_event::<A>(Format::Json, id, snap.version, event));
                        }
                        let mut headers = Headers::default();
                        headers.insert(header::VERSION, snap.version.to_string());
                        headers.insert(header::SCHEMA_VERSION, A::EVENT_SCHEMA_VERSION.to_string());
                        headers.insert(header::COMMAND_ID, cmd.command_id.as_bytes());
                        ctx.out.send(OutRecord {
                            topic: self.settings.events_topic.clone(),
                            partition: None,
                            key: Some(id.as_bytes().to_vec()),
                            value: Some(wire::encode_event::<A>(self.settings.event_format, id, snap.version, event)),
                            headers,
                            timestamp: source.timestamp,
                        });
                    }
                    metrics::counter!("millrace_events_total").increment(events.len() as u64);
                    Reply { version: snap.version, event_count: Some(events.len() as u32), ..base }
                }
            },
        };
        self.remember(&mut snap, &reply);
        if let Some(offset) = source.offset {
            snap.source_offset = offset;
        }
        if let Some(aw) = &self.settings.awaits {
            snap.await_deadline = match (A::awaiting(&snap.state), snap.await_deadline) {
                (None, _) => None,
                // The stash's own command left the state waiting: stop, rather than run it
                // again and again. Its reply says why.
                (Some(_), Some(_)) if source.internal => {
                    tracing::warn!(aggregate = id, command = %cmd.command_id, "a command of the stash left the aggregate waiting; the wait ends");
                    None
                }
                (Some(_), Some(deadline)) => Some(deadline),
                (Some(_), None) => Some(source.timestamp.unwrap_or(self.stream_time).saturating_add(aw.timeout_ms)),
            };
            if let Some(pending) = &mut self.pending {
                match snap.await_deadline {
                    Some(d) => pending.insert(id.to_string(), d),
                    None => pending.remove(id),
                };
            }
        }
        let bytes = wire::encode_snapshot::<A>(self.settings.store_format, &snap);
        ctx.put(id.as_bytes(), Some(bytes));
        if self.quarantined.remove(id) {
            // Its snapshot was deleted or repaired: readable again.
            self.settings.quarantine.remove(&self.settings.store, id);
        }
        self.reply(ctx, source, cmd.into(), reply);
        Ok(Ok(()))
    }

    /// The snapshot, or None (logged) when it cannot be read: for work no command asked
    /// for, which must not stop the partition over one key.
    fn load_readable(&self, ctx: &Context<'_>, id: &str) -> Result<Option<Snapshot<A::State>>, ProcessError> {
        match self.load(ctx, id) {
            Ok(s) => Ok(Some(s)),
            Err(ProcessError::CorruptSnapshot { reason, .. }) => {
                tracing::warn!(store = %self.settings.store, key = id, %reason, "skipping an unreadable snapshot");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The aggregate's version for a reply that does not load it otherwise; 0 when its
    /// snapshot cannot be read (the reply's reason is about the command, not the snapshot).
    fn current_version(&self, ctx: &Context<'_>, id: &str) -> u64 {
        self.load(ctx, id).map_or(0, |s| s.version)
    }

    /// An operator's request about one aggregate's snapshot (header `millrace.admin`), run
    /// by the partition's owner in its transaction like any command:
    /// - `repair-snapshot`: refolds the state from the aggregate's event history
    ///   (`event_history: true`); the version is the number of events;
    /// - `delete-snapshot`: removes a snapshot that cannot be read (a readable one is
    ///   refused: its aggregate would restart at version 1 while its events remain).
    ///
    /// Either takes the key out of quarantine.
    fn admin(&mut self, ctx: &mut Context<'_>, record: &InRecord, op: &str) -> Result<(), ProcessError> {
        let value = record.value.as_deref().unwrap_or_default();
        let Some(env) = wire::decode_envelope(self.settings.command_format, value) else {
            ctx.out.send(dead_letter(record, "admin request without a readable command_id and aggregate_id", &self.settings.dead_letter_topic));
            return Ok(());
        };
        if record.key.as_deref() != Some(env.aggregate_id.as_bytes()) {
            self.invalid(ctx, record, &env, 0, key_mismatch(&env.aggregate_id));
            return Ok(());
        }
        let id = env.aggregate_id.as_str();
        let readable = match self.load(ctx, id) {
            Ok(snap) => Some(snap.version),
            Err(ProcessError::CorruptSnapshot { .. }) => None,
            Err(e) => return Err(e),
        };
        let outcome = match op {
            "delete-snapshot" => match readable {
                Some(version) => Err((Outcome::Rejected, version, "the snapshot reads; only an unreadable snapshot can be deleted (repair-snapshot refolds one from its events)".to_string())),
                None => {
                    ctx.put(id.as_bytes(), None);
                    Ok((0, None, "snapshot deleted by an operator".to_string()))
                }
            },
            "repair-snapshot" => self.refold(ctx, id).map(|(version, count)| (version, Some(count), format!("snapshot refolded from {count} events of the history"))),
            other => Err((Outcome::Invalid, 0, format!("unknown admin request {other:?}; expected delete-snapshot or repair-snapshot"))),
        };
        let to = ReplyTo { correlation_id: env.correlation_id.as_deref(), reply_to: env.reply_to.as_deref() };
        let source = Source { headers: &record.headers, offset: Some(record.offset), timestamp: record.timestamp, internal: false };
        let base = Reply {
            command_id: env.command_id.clone(),
            aggregate_id: id.to_string(),
            outcome: Outcome::Accepted,
            version: 0,
            event_count: None,
            reason: None,
            expected: None,
            actual: None,
            original_outcome: None,
        };
        let reply = match outcome {
            Ok((version, event_count, reason)) => {
                tracing::warn!(store = %self.settings.store, key = id, %reason, "admin request carried out");
                if self.quarantined.remove(id) {
                    self.settings.quarantine.remove(&self.settings.store, id);
                }
                if let Some(pending) = &mut self.pending {
                    pending.remove(id);
                }
                Reply { version, event_count: event_count.map(|n| n as u32), reason: Some(reason), ..base }
            }
            Err((outcome, version, reason)) => Reply { outcome, version, reason: Some(reason), ..base },
        };
        self.reply(ctx, &source, to, reply);
        Ok(())
    }

    /// A new snapshot folded from the aggregate's committed event history: (version,
    /// events folded). The dedup window starts empty.
    fn refold(&mut self, ctx: &mut Context<'_>, id: &str) -> Result<(u64, u64), (Outcome, u64, String)> {
        let failed = |reason: String| (Outcome::Failed, 0, reason);
        if !self.settings.event_history {
            return Err(failed(format!(
                "aggregate store {} keeps no event history (event_history: true); delete the snapshot instead",
                self.settings.store
            )));
        }
        let store = ctx.store.as_deref().expect("an aggregate has a store").inner().clone();
        let events = store.events_of(id.as_bytes(), 1, usize::MAX).map_err(|e| failed(e.to_string()))?;
        let mut state = A::State::default();
        for (i, (version, bytes)) in events.iter().enumerate() {
            if *version != i as u64 + 1 {
                return Err(failed(format!("the event history of {id} has a gap before version {version}")));
            }
            let event = wire::decode_event::<A>(Format::Json, bytes, Some(A::EVENT_SCHEMA_VERSION))
                .map_err(|e| failed(format!("event version {version} of the history cannot be read: {e}")))?;
            state = A::evolve(state, &event.body);
        }
        let version = events.len() as u64;
        let snap = Snapshot { version, state, source_offset: -1, recent: Default::default(), await_deadline: None };
        ctx.put(id.as_bytes(), Some(wire::encode_snapshot::<A>(self.settings.store_format, &snap)));
        Ok((version, version))
    }

    /// The waiting aggregates, loaded from the store's index on first use.
    fn pending(&mut self, ctx: &Context<'_>) -> Result<&mut BTreeMap<String, i64>, ProcessError> {
        if self.pending.is_none() {
            let mut found = BTreeMap::new();
            let store = ctx.store.as_deref().expect("an aggregate has a store").inner().clone();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = store.index_scan(AWAITING_INDEX, "yes", after.as_deref(), 1_000)?;
                let Some(last) = page.last().map(|(k, _)| k.clone()) else { break };
                for (k, _) in page {
                    let id = String::from_utf8_lossy(&k).into_owned();
                    // The overlay may have moved on since the commit the index reflects. An
                    // unreadable snapshot waits for nothing: its key is quarantined.
                    if let Some(deadline) = self.load_readable(ctx, &id)?.and_then(|s| s.await_deadline) {
                        found.insert(id, deadline);
                    }
                }
                after = Some(last);
            }
            self.pending = Some(found);
        }
        Ok(self.pending.as_mut().expect("loaded above"))
    }

    /// Checks every waiting aggregate at time `clock` (event time, or the wall clock),
    /// against the table as of min(clock, deadline, the time the table is final through):
    /// all keys there → `ready`; that time is the deadline and a key is missing →
    /// `expired`; otherwise it keeps waiting. Only final data decides, so a replay, which
    /// finds the table further ahead, decides the same.
    fn check_waits(&mut self, ctx: &mut Context<'_>, clock: i64) -> Result<(), ProcessError> {
        let Some(aw) = self.settings.awaits.clone() else { return Ok(()) };
        let due: Vec<(String, i64)> = self.pending(ctx)?.iter().map(|(k, d)| (k.clone(), *d)).collect();
        if due.is_empty() {
            return Ok(());
        }
        // No waiting for the table here: a lagging table only delays a decision, it never
        // changes one, so the partition keeps moving meanwhile.
        let final_through = aw.table.final_through();
        for (id, deadline) in due {
            let Some(snap) = self.load_readable(ctx, &id)? else {
                self.pending.as_mut().expect("loaded").remove(&id);
                continue;
            };
            let Some(wait) = A::awaiting(&snap.state).filter(|_| snap.await_deadline == Some(deadline)) else {
                self.pending.as_mut().expect("loaded").remove(&id);
                continue;
            };
            let as_of = clock.min(deadline).min(final_through);
            let start = deadline.saturating_sub(aw.timeout_ms);
            if as_of < start {
                continue; // the table is not final through the wait's start yet
            }
            let (mut missing, mut satisfied_at) = (Vec::new(), start);
            for k in &wait.keys {
                match aw.table.exists_since(k.as_bytes(), as_of)? {
                    Some(since) => satisfied_at = satisfied_at.max(since),
                    None => missing.push(k.clone()),
                }
            }
            // The command is stamped with the time the wait was decided in event time (when
            // the last key appeared, or the deadline), never with the clock that noticed:
            // everything downstream that reads by time then sees the same as in a replay.
            let (body, at, tag) = if missing.is_empty() {
                (wait.ready, satisfied_at, "ready")
            } else if as_of == deadline {
                let reason = format!(
                    "waited {} ms for {:?} in table {}; not there by then",
                    aw.timeout_ms, missing, aw.table_name
                );
                ((wait.expired)(reason), deadline, "expired")
            } else {
                continue;
            };
            metrics::counter!("millrace_awaits_total", "outcome" => tag).increment(1);
            let cmd = wire::Command {
                // Deterministic, so a replay's replies and dedup match live ones.
                command_id: format!("{id}/await/{}", snap.version),
                aggregate_id: id.clone(),
                expected_version: Some(snap.version),
                correlation_id: None,
                reply_to: None,
                body,
            };
            let headers = Headers::default();
            let source = Source { headers: &headers, offset: None, timestamp: Some(at), internal: true };
            let record_time = ctx.timestamp.replace(at);
            let handled = self.handle(ctx, &source, &cmd);
            ctx.timestamp = record_time;
            if let Err(refused) = handled? {
                tracing::warn!(aggregate = %id, reason = %refused.reason(), "the stash's command could not run; the wait ends");
            }
        }
        Ok(())
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
        let format = self.settings.command_format;
        if let Some(op) = record.headers.get_str(header::ADMIN) {
            return self.admin(ctx, record, op);
        }
        let cmd = match wire::decode_command::<A>(format, value) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot decode {format} command: {e}");
                match wire::decode_envelope(format, value) {
                    // The body is wrong but the sender can be answered.
                    Some(env) if record.key.as_deref() == Some(env.aggregate_id.as_bytes()) => {
                        let version = self.current_version(ctx, &env.aggregate_id);
                        self.invalid(ctx, record, &env, version, reason);
                    }
                    Some(env) => self.invalid(ctx, record, &env, 0, key_mismatch(&env.aggregate_id)),
                    None => dlq(ctx, &reason),
                }
                return Ok(());
            }
        };
        // The key decides the partition, and so which task owns the aggregate. A key that
        // disagrees with the envelope would let two tasks write one aggregate.
        if record.key.as_deref() != Some(cmd.aggregate_id.as_bytes()) {
            let env = cmd.envelope();
            self.invalid(ctx, record, &env, 0, key_mismatch(&cmd.aggregate_id));
            return Ok(());
        }
        if let Some(ts) = record.timestamp {
            self.stream_time = self.stream_time.max(ts);
        }
        if self.settings.awaits.is_some() {
            // Load the waiting set before this command can add to it.
            self.pending(ctx)?;
        }
        let source = Source { headers: &record.headers, offset: Some(record.offset), timestamp: record.timestamp, internal: false };
        match self.handle(ctx, &source, &cmd)? {
            Ok(()) => {}
            Err(Refused::Invalid { version, reason }) => self.invalid(ctx, record, &cmd.envelope(), version, reason),
            Err(Refused::Failed(reason)) => self.failed(ctx, record, &cmd.envelope(), reason),
        }
        if self.settings.awaits.is_some() && self.stream_time > i64::MIN {
            self.check_waits(ctx, self.stream_time)?;
        }
        Ok(())
    }

    fn punctuate(&mut self, now_ms: i64, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if self.settings.awaits.is_some() {
            self.check_waits(ctx, now_ms)?;
        }
        Ok(())
    }

    fn aborted(&mut self) {
        self.pending = None;
    }

    fn fail(&mut self, record: &InRecord, reason: &str, ctx: &mut Context<'_>) -> bool {
        let Some(env) = record.value.as_deref().and_then(|v| wire::decode_envelope(self.settings.command_format, v)) else {
            return false;
        };
        let version = self.current_version(ctx, &env.aggregate_id);
        self.refuse(ctx, record, &env, Outcome::Failed, version, reason.to_string(), "failed");
        true
    }
}

fn key_mismatch(aggregate_id: &str) -> String {
    format!("record key does not equal aggregate_id {aggregate_id:?}")
}

/// Renders this aggregate's snapshots for the query server.
pub struct SnapshotRenderer<A> {
    pub format: Format,
    pub _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> ValueRenderer for SnapshotRenderer<A> {
    fn render(&self, value: &[u8]) -> Result<serde_json::Value, String> {
        let snap = wire::decode_snapshot_view::<A>(self.format, value).map_err(|e| e.to_string())?;
        let mut doc = serde_json::json!({
            "version": snap.version,
            "state": serde_json::to_value(&snap.state).map_err(|e| e.to_string())?,
        });
        if let Some(deadline) = snap.await_deadline {
            doc["awaiting_until"] = deadline.into();
        }
        Ok(doc)
    }

    /// The text `render` and the key would give, without the document around the state:
    /// the state still goes through `to_value`, as in `render`, so whatever that changes
    /// (an `f32` widened, a raw value parsed, repeated keys merged) is changed alike.
    fn render_entry(&self, key: &str, value: &[u8]) -> Result<super::RenderedEntry, String> {
        use std::io::Write;
        let snap = wire::decode_snapshot_view::<A>(self.format, value).map_err(|e| e.to_string())?;
        let state = serde_json::to_value(&snap.state).map_err(|e| e.to_string())?;
        let mut json = Vec::with_capacity(value.len() + key.len() + 48);
        json.extend_from_slice(b"{\"key\":");
        serde_json::to_writer(&mut json, key).map_err(|e| e.to_string())?;
        // Writing into a Vec cannot fail.
        let _ = write!(json, ",\"version\":{},\"state\":", snap.version);
        serde_json::to_writer(&mut json, &state).map_err(|e| e.to_string())?;
        if let Some(deadline) = snap.await_deadline {
            let _ = write!(json, ",\"awaiting_until\":{deadline}");
        }
        json.push(b'}');
        Ok(super::RenderedEntry { version: Some(snap.version), json })
    }

    /// Only the state is decoded, and only its indexed fields are rendered.
    fn index_fields(&self, value: &[u8], fields: &[String]) -> Result<super::IndexFields, String> {
        let snap = wire::decode_snapshot_view::<A>(self.format, value).map_err(|e| e.to_string())?;
        Ok(super::IndexFields { fields: super::index_fields::from_state(&snap.state, fields)?, awaiting: snap.await_deadline.is_some() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::customer::{Customer, CustomerAggregate, Status};
    use crate::domain::order::{Item, Order, OrderAggregate, OrderStatus};

    /// Only `render`: answers through the trait's default `render_entry`.
    struct ThroughTheTree<A>(SnapshotRenderer<A>);

    impl<A: Aggregate> ValueRenderer for ThroughTheTree<A> {
        fn render(&self, value: &[u8]) -> Result<serde_json::Value, String> {
            self.0.render(value)
        }
    }

    /// `state`'s answers from both paths, in the snapshot formats given, at versions 0
    /// (never written), 3 and a large one, waiting or not, under keys that need escaping.
    fn answers_agree<A: Aggregate>(state: A::State, formats: &[Format]) {
        for &format in formats {
            let direct = SnapshotRenderer::<A> { format, _aggregate: PhantomData };
            let tree = ThroughTheTree(SnapshotRenderer::<A> { format, _aggregate: PhantomData });
            for (version, await_deadline) in [(0, None), (3, Some(-1)), (u64::MAX >> 1, Some(1_700_000_000_000))] {
                let snap = Snapshot {
                    version,
                    state: state.clone(),
                    source_offset: 7,
                    recent: vec![Processed { outcome: Outcome::Accepted, command_id: "c-1".into(), version, reason: None }].into(),
                    await_deadline,
                };
                let bytes = wire::encode_snapshot::<A>(format, &snap);
                for key in ["ada", "a \"quoted\"\\key/ü\u{1}"] {
                    let fast = direct.render_entry(key, &bytes).unwrap();
                    let general = tree.render_entry(key, &bytes).unwrap();
                    assert_eq!(std::str::from_utf8(&fast.json).unwrap(), std::str::from_utf8(&general.json).unwrap(), "{format:?}");
                    assert_eq!((fast.version, general.version), (Some(version), Some(version)));
                    let doc: serde_json::Value = serde_json::from_slice(&fast.json).unwrap();
                    assert_eq!(doc["key"], key);
                    assert_eq!(doc["state"], serde_json::to_value(&state).unwrap());
                    assert_eq!(doc.get("awaiting_until").and_then(serde_json::Value::as_i64), await_deadline);
                }
            }
        }
    }

    /// A lookup's answer, written without the JSON tree around the state, is byte for byte
    /// what the tree gave: a flat state with text to escape, in both formats, and one with
    /// an enum, a list of structs and an empty option.
    #[test]
    fn a_snapshots_direct_answer_equals_its_rendered_document() {
        answers_agree::<CustomerAggregate>(Customer {
            name: "Ada \"Countess\" Løvelace\n".into(),
            email: "ada@example.org".into(),
            status: Status::Active,
        }, &[Format::Json, Format::Protobuf]);
        answers_agree::<OrderAggregate>(Order {
            status: OrderStatus::Pending,
            customer_id: "ada".into(),
            items: vec![Item { product_id: "p-1".into(), quantity: 2 }, Item { product_id: "p-\u{2028}".into(), quantity: -1 }],
            reason: None,
        }, &[Format::Json]); // Orders have no protobuf schema.
    }
}
