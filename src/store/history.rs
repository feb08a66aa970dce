//! Versions of a key over time, for as-of lookups (in the spirit of Kafka Streams'
//! versioned stores, KIP-889). A global table keeps every value it applied with the
//! record's timestamp, so a join or a stash can ask "what was this key at time t" and get
//! the same answer live and in a replay, where the table is already loaded to its end.
//!
//! Layout, in the store's `history` column family: the key escaped so that no key's
//! entries run into another's (0x00 → 0x00 0xFF, then a 0x00 0x01 terminator), then the
//! timestamp big-endian with the sign bit flipped, so entries sort by key and then time.
//! The value is a tag byte (0 = deleted, 1 = value) and the value.

pub(super) const HISTORY_CF: &str = "history";

/// The escaped key: every version of `key` starts with it, and no other key's do.
pub(super) fn prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
    out
}

pub(super) fn version_key(key: &[u8], ts: i64) -> Vec<u8> {
    let mut out = prefix(key);
    out.extend_from_slice(&((ts as u64) ^ (1 << 63)).to_be_bytes());
    out
}

/// The time of a version key.
pub(super) fn version_time(version_key: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&version_key[version_key.len() - 8..]);
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

pub(super) fn encode_value(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        None => vec![0],
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 1);
            out.push(1);
            out.extend_from_slice(v);
            out
        }
    }
}

pub(super) fn decode_value(stored: &[u8]) -> Option<Vec<u8>> {
    match stored.split_first() {
        Some((1, v)) => Some(v.to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_key_then_time_and_keys_never_interleave() {
        let mut ks = vec![
            version_key(b"a", 5),
            version_key(b"a\0", -3),
            version_key(b"a", -7),
            version_key(b"ab", 1),
            version_key(b"a", i64::MAX),
        ];
        ks.sort();
        let a = prefix(b"a");
        let firsts: Vec<bool> = ks.iter().map(|k| k.starts_with(&a)).collect();
        assert_eq!(firsts, [true, true, true, false, false], "the versions of `a` are contiguous");
        assert!(ks[0] < ks[1] && ks[0] == version_key(b"a", -7), "older first");
        assert_eq!(decode_value(&encode_value(Some(b"v"))), Some(b"v".to_vec()));
        assert_eq!(version_time(&version_key(b"a\0b", -42)), -42);
        assert_eq!(version_time(&version_key(b"", i64::MAX)), i64::MAX);
        assert_eq!(decode_value(&encode_value(None)), None);
    }
}
