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
use siphasher::sip128::SipHasher13;

/// The key of a `recent` entry in `SnapshotEnvelope`: field 5, length-delimited.
const RECENT_KEY: u8 = 5 << 3 | 2;

/// The longest command id kept as it is; a longer one is kept as its digest, which is as
/// long as this.
const RAW_ID_MAX: usize = 16;

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
        let id = command_id.as_bytes();
        let wanted = (id.len() > RAW_ID_MAX).then(|| digest(id));
        self.entries().find_map(|e| {
            // Entries written before digests existed hold long ids as they are.
            let found = match id_of(e)? {
                StoredId::Raw(raw) => raw == id,
                StoredId::Digest(d) => wanted.is_some_and(|w| w[..] == *d),
            };
            if !found {
                return None;
            }
            let mut p = processed(pb::ProcessedCommand::decode(e).ok()?)?;
            p.command_id = command_id.to_string();
            Some(p)
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

    /// Every entry decoded, oldest first; an id kept as a digest reads as empty.
    #[cfg(test)]
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

/// The entry kept for `p`: its id as it is, or the id's digest when it is longer.
pub(super) fn to_pb(p: &Processed) -> pb::ProcessedCommand {
    let long = p.command_id.len() > RAW_ID_MAX;
    pb::ProcessedCommand {
        command_id: if long { String::new() } else { p.command_id.clone() },
        command_id_digest: if long { digest(p.command_id.as_bytes()).to_vec() } else { Vec::new() },
        outcome: p.outcome.to_pb() as i32,
        version: p.version,
        reason: p.reason.clone().unwrap_or_default(),
    }
}

/// SipHash-1-3 with 128-bit output and a zero key: a fixed function, since digests are
/// stored and compared across versions and hosts (pinned by a test below).
fn digest(id: &[u8]) -> [u8; 16] {
    SipHasher13::new().hash(id).as_bytes()
}

fn processed(p: pb::ProcessedCommand) -> Option<Processed> {
    Some(Processed {
        outcome: Outcome::from_pb(p.outcome)?,
        command_id: p.command_id,
        version: p.version,
        reason: Some(p.reason).filter(|s| !s.is_empty()),
    })
}

/// How an entry holds its command's id.
enum StoredId<'a> {
    Raw(&'a [u8]),
    Digest(&'a [u8]),
}

/// The `command_id` (field 1) or `command_id_digest` (field 5) of an encoded
/// `ProcessedCommand`, unparsed.
fn id_of(mut entry: &[u8]) -> Option<StoredId<'_>> {
    let (mut raw, mut digest): (&[u8], &[u8]) = (&[], &[]);
    while !entry.is_empty() {
        let (field, wire_type) = key(&mut entry).ok()?;
        match (field, wire_type) {
            (1, 2) => raw = length_delimited(&mut entry).ok()?,
            (5, 2) => digest = length_delimited(&mut entry).ok()?,
            _ => skip(&mut entry, wire_type).ok()?,
        }
    }
    Some(if digest.is_empty() { StoredId::Raw(raw) } else { StoredId::Digest(digest) })
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

    const UUID: &str = "0b6f3a1e-7c2d-4e8f-9a10-5b4c3d2e1f00";

    /// A long id is kept as its digest: found again, not confused with another long id or
    /// with a short one; a UUID's entry takes 24 bytes instead of 44 (without a reason).
    #[test]
    fn a_long_id_is_kept_as_its_digest() {
        let mut w = DedupWindow::default();
        w.remember(&p(UUID, 7, Outcome::Rejected, Some("why")), 32);
        let entry_len = w.encoded_len();
        w.remember(&p("short", 8, Outcome::Accepted, None), 32);
        assert_eq!(w.find(UUID), Some(p(UUID, 7, Outcome::Rejected, Some("why"))));
        assert_eq!(w.find(&UUID.replace('0', "1")), None, "another long id");
        assert_eq!(w.find(""), None, "the digest entry holds no raw id to match an empty one");
        assert_eq!(w.find("short"), Some(p("short", 8, Outcome::Accepted, None)), "a short id is kept as it is");
        let mut raw = Vec::new();
        w.write(&mut raw);
        let stored = pb::SnapshotEnvelope::decode(&raw[..]).unwrap().recent;
        assert_eq!(stored[0].command_id, "", "the long id itself is not stored");
        assert_eq!(stored[0].command_id_digest.len(), 16);
        assert_eq!(stored[1].command_id, "short");
        assert!(stored[1].command_id_digest.is_empty());
        // key, length, digest (2 + 16), outcome (2), version (2), reason (2 + 3).
        assert_eq!(entry_len, 2 + 18 + 2 + 2 + 5);
    }

    /// Windows written before digests existed hold long ids as they are: a retry of such a
    /// command is still found, and new entries beside it use digests.
    #[test]
    fn a_long_id_written_as_it_is_is_still_found() {
        let old = pb::ProcessedCommand { command_id: UUID.into(), outcome: pb::Outcome::Accepted as i32, version: 3, reason: String::new() , command_id_digest: Vec::new() };
        let env = pb::SnapshotEnvelope { recent: vec![old], ..Default::default() }.encode_to_vec();
        let mut w = DedupWindow::default();
        w.push_record(record(&mut &env[..]).unwrap());
        w.remember(&p(&UUID.replace('0', "2"), 4, Outcome::Accepted, None), 32);
        assert_eq!(w.find(UUID), Some(p(UUID, 3, Outcome::Accepted, None)));
        assert_eq!(w.find(&UUID.replace('0', "2")), Some(p(&UUID.replace('0', "2"), 4, Outcome::Accepted, None)));
    }

    /// Digests are stored and compared across versions and hosts: the function must never
    /// change, or every window written before would stop matching the retries of its
    /// commands: a different hasher, key, variant or byte order changes these bytes.
    #[test]
    fn the_digest_function_is_fixed() {
        assert_eq!(hex(&digest(UUID.as_bytes())), DIGEST_OF_UUID);
        assert_eq!(hex(&digest(b"")), DIGEST_OF_EMPTY);
    }

    /// Computed by a separate implementation of SipHash-1-3-128 written from the paper
    /// (Aumasson and Bernstein), which gives the reference SipHash-2-4-128 vectors.
    const DIGEST_OF_UUID: &str = "7d68107c0e2ec3ff7298c5791414af10";
    const DIGEST_OF_EMPTY: &str = "0db4d9615d9334210333fb31d05e1cb9";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
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
