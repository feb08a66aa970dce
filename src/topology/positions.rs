//! Where each key and value of a topology file sits, by dotted path
//! (`aggregates.customers.events`). serde drops positions once it has built the typed
//! schema, so checks that need the whole file (references, duplicates, co-partitioning)
//! look their `file:line:col` up here. Filled by the YAML reader (`yaml.rs`).

use std::collections::HashMap;

/// 1-based line and column.
pub type LineCol = (usize, usize);

#[derive(Debug, Clone, Default)]
pub struct Positions {
    pub(super) keys: HashMap<String, LineCol>,
    pub(super) values: HashMap<String, LineCol>,
    /// Keys that appear twice in one mapping: (path, position of the second one).
    pub duplicates: Vec<(String, LineCol)>,
}

impl Positions {
    /// Position of the value at `path`, else of its key.
    pub fn value(&self, path: &str) -> Option<LineCol> {
        self.values.get(path).or_else(|| self.keys.get(path)).copied()
    }

    /// Position of the key at `path`.
    pub fn key(&self, path: &str) -> Option<LineCol> {
        self.keys.get(path).copied()
    }
}
