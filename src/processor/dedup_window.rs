//! An aggregate's dedup window: the commands it answered last, kept in its snapshot as
//! the wire bytes of their `ProcessedCommand` entries (field 5 of `SnapshotEnvelope`),
//! oldest first. Only the entry a command matches is ever decoded: decoding every entry
//! into strings and encoding it again for every command cost 3.6 µs of a snapshot's 4.0 µs
//! with 32 entries (the default window), about a sixth of the processing CPU per command
//! in `deploy/bench`. The snapshot envelope (`wire.rs`) hands the window's records in and
//! out unparsed.

use super::wire::{Outcome, Processed};
use crate::codec::proto::envelope as pb;
use crate::codec::protobuf_wire::{key, length_delimited, record, skip};
use prost::Message;

/// The key of a `recent` entry in `SnapshotEnvelope`: field 5, length-delimited.
const RECENT_KEY: u8 = 5 << 3 | 2;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DedupWindow {
    /// Each entry as it is on the wire: its key, its length, the encoded message.
    raw: Vec<u8>,
    len: usize,
}

impl DedupWindow {
    /// The entry for `command_id`, if the window holds it (an entry whose outcome this
    /// version does not know is not a match).
    pub fn find(&self, command_id: &str) -> Option<Processed> {
        self.entries().find_map(|e| {
            if id_of(e)? != command_id.as_bytes() {
                return None;
            }
            processed(pb::ProcessedCommand::decode(e).ok()?)
        })
    }

    /// Adds the newest entry and drops the oldest past `max` (at least one is kept).
    pub fn remember(&mut self, p: &Processed, max: usize) {
        self.push(p);
        while self.len > max.max(1) {
            let mut rest = &self.raw[..];
            // Entries are only ever added whole, so the first one parses.
            let first = record(&mut rest).expect("a dedup window holds whole entries");
            let taken = first.len();
            self.raw.drain(..taken);
            self.len -= 1;
        }
    }

    fn push(&mut self, p: &Processed) {
        self.raw.push(RECENT_KEY);
        to_pb(p).encode_length_delimited(&mut self.raw).expect("a Vec grows as needed");
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry decoded, oldest first.
    pub fn to_vec(&self) -> Vec<Processed> {
        self.entries().filter_map(|e| processed(pb::ProcessedCommand::decode(e).ok()?)).collect()
    }

    /// The encoded messages, oldest first.
    fn entries(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.raw[..];
        // Every record is a field 5 key and a length-delimited entry (`push`, `push_record`).
        std::iter::from_fn(move || {
            key(&mut rest).ok()?;
            length_delimited(&mut rest).ok()
        })
    }

    /// Takes a whole `recent` record (key, length, message) as read from an envelope.
    pub(super) fn push_record(&mut self, record: &[u8]) {
        self.raw.extend_from_slice(record);
        self.len += 1;
    }

    /// Appends the window's records to an envelope being written.
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.raw);
    }

    pub(super) fn encoded_len(&self) -> usize {
        self.raw.len()
    }
}

impl From<Vec<Processed>> for DedupWindow {
    fn from(recent: Vec<Processed>) -> Self {
        let mut w = DedupWindow::default();
        for p in &recent {
            w.push(p);
        }
        w
    }
}

fn to_pb(p: &Processed) -> pb::ProcessedCommand {
    pb::ProcessedCommand {
        command_id: p.command_id.clone(),
        outcome: p.outcome.to_pb() as i32,
        version: p.version,
        reason: p.reason.clone().unwrap_or_default(),
    }
}

fn processed(p: pb::ProcessedCommand) -> Option<Processed> {
    Some(Processed {
        outcome: Outcome::from_pb(p.outcome)?,
        command_id: p.command_id,
        version: p.version,
        reason: Some(p.reason).filter(|s| !s.is_empty()),
    })
}

/// The `command_id` (field 1) of an encoded `ProcessedCommand`, unparsed.
fn id_of(mut entry: &[u8]) -> Option<&[u8]> {
    let mut id: &[u8] = &[];
    while !entry.is_empty() {
        let (field, wire_type) = key(&mut entry).ok()?;
        match (field, wire_type) {
            (1, 2) => id = length_delimited(&mut entry).ok()?,
            _ => skip(&mut entry, wire_type).ok()?,
        }
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, version: u64, outcome: Outcome, reason: Option<&str>) -> Processed {
        Processed { command_id: id.into(), outcome, version, reason: reason.map(String::from) }
    }

    #[test]
    fn finds_only_what_it_holds_and_keeps_the_newest() {
        let mut w = DedupWindow::default();
        for i in 1..=5 {
            w.remember(&p(&format!("c-{i}"), i, Outcome::Accepted, None), 3);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.to_vec().iter().map(|p| p.command_id.as_str()).collect::<Vec<_>>(), ["c-3", "c-4", "c-5"]);
        assert_eq!(w.find("c-4"), Some(p("c-4", 4, Outcome::Accepted, None)));
        assert_eq!(w.find("c-2"), None, "dropped from the window");
        assert_eq!(w.find("c-"), None, "a prefix is not a match");
        w.remember(&p("c-6", 5, Outcome::Rejected, Some("no")), 3);
        assert_eq!(w.find("c-6"), Some(p("c-6", 5, Outcome::Rejected, Some("no"))));
        // A window of 0 still keeps the newest entry.
        w.remember(&p("c-7", 6, Outcome::Accepted, None), 0);
        assert_eq!(w.to_vec(), vec![p("c-7", 6, Outcome::Accepted, None)]);
    }

    #[test]
    fn reads_the_wire_format_of_the_generated_message() {
        let entries = vec![p("a", 1, Outcome::Accepted, None), p("ü-€", 2, Outcome::Duplicate, Some("why"))];
        let env = pb::SnapshotEnvelope { recent: entries.iter().map(to_pb).collect(), ..Default::default() };
        let bytes = env.encode_to_vec();
        let mut w = DedupWindow::default();
        let mut buf = &bytes[..];
        while !buf.is_empty() {
            let whole = record(&mut buf).unwrap();
            w.push_record(whole);
        }
        assert_eq!(w.to_vec(), entries);
        assert_eq!(DedupWindow::from(entries.clone()), w, "the same bytes as prost writes");
    }
}
