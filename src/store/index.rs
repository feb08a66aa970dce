//! Secondary indexes of a store: "which keys have `status` = DELETED". Entries live in the
//! store's `index` column family as `<index> 0 <field value> 0 <primary key>` and are
//! written in the same WriteBatch as the values they describe, so an index is never ahead
//! of or behind its store, including after a restore. When the set of declared indexes
//! changes, the index is rebuilt from the store when it is opened.

use std::sync::Arc;

pub(super) const INDEX_CF: &str = "index";
pub(super) const DEFINITION_KEY: &[u8] = b"index-definition";

/// What a value is indexed under: (index name, field value) pairs.
pub type Extract = dyn Fn(&[u8]) -> Vec<(String, String)> + Send + Sync;

/// The indexes of one store and how to read their fields from a stored value.
#[derive(Clone)]
pub struct Indexer {
    pub names: Vec<String>,
    pub extract: Arc<Extract>,
}

impl Indexer {
    /// What the meta column family remembers, to notice a changed set of indexes.
    pub(super) fn definition(&self) -> Vec<u8> {
        let mut names = self.names.clone();
        names.sort();
        names.join("\n").into_bytes()
    }

    /// Index keys for `value` stored under `primary`.
    pub(super) fn keys(&self, primary: &[u8], value: &[u8]) -> Vec<Vec<u8>> {
        (self.extract)(value).into_iter().map(|(index, field)| entry(&index, &field, primary)).collect()
    }
}

pub(super) fn prefix(index: &str, field: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(index.len() + field.len() + 2);
    k.extend_from_slice(index.as_bytes());
    k.push(0);
    k.extend_from_slice(field.as_bytes());
    k.push(0);
    k
}

pub(super) fn entry(index: &str, field: &str, primary: &[u8]) -> Vec<u8> {
    let mut k = prefix(index, field);
    k.extend_from_slice(primary);
    k
}

/// The first key after every key that starts with `prefix` (which ends in 0).
pub(super) fn upper_bound(prefix: &[u8]) -> Vec<u8> {
    let mut b = prefix.to_vec();
    if let Some(last) = b.last_mut() {
        *last += 1;
    }
    b
}
