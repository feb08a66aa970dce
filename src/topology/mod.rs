//! Topology files: the YAML that wires an application (topics, aggregates, stores, codecs,
//! processing settings). Loading reads the YAML once (`yaml`), types it node by node
//! (`raw`), then checks the whole file and resolves its names (`validate`) into the model
//! the runtime runs (`model`). Every problem in the file is reported, each with its file,
//! line and column and what was expected.
//!
//! May use: codec, store (tuning), processor (settings it builds).

mod model;
mod names;
mod needs;
pub mod describe;
mod positions;
mod raw;
mod validate;
mod yaml;

pub use model::{AggregateNode, Awaits, JoinNode, JoinTable, ProjectionKind, ProjectionNode, RekeyNode, Store, TableNode, Topic, Topology};
pub use names::{changelog_topic, dead_letter_topic, repartition_topic};
pub use needs::{TopicNeed, TopicRole};
pub use positions::Positions;
pub use raw::{DeadLetter, HttpSettings, OutboxSpec, Processing, StoreSpec, TopicSpec};

use crate::error::Recovery;
use std::fmt;
use std::path::{Path, PathBuf};

/// A topology file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{path}: cannot read: {source}", path = path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// Every problem found, in file order.
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

impl TopologyError {
    pub fn recovery(&self) -> Recovery {
        Recovery::Reject
    }

    /// The problems, in file order (none for a file that could not be read).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            TopologyError::Invalid(d) => d,
            TopologyError::Read { .. } => &[],
        }
    }
}

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub at: Position,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// One diagnostic a line, as a compiler prints them.
struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() > 1 {
            write!(f, "\n{} problems in the topology file", self.0.len())?;
        }
        Ok(())
    }
}

/// `file:line:col`, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Reads, parses and validates a topology file.
pub fn load(path: &Path) -> Result<Topology, TopologyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TopologyError::Read { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// Parses and validates topology text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Topology, TopologyError> {
    let at = |(line, column): (usize, usize)| Position { file: path.to_path_buf(), line, column };
    let doc = yaml::read(text).map_err(|e| TopologyError::Invalid(vec![Diagnostic { at: at(e.at), message: e.message }]))?;
    // A key given twice is reported with the rest: serde would only see its first value.
    let mut diagnostics: Vec<Diagnostic> = doc
        .positions
        .duplicates
        .iter()
        .map(|(key, place)| {
            let name = key.rsplit('.').next().unwrap_or(key);
            let first = doc.positions.key(key).map_or(String::new(), |(l, c)| format!(" (first defined at {l}:{c})"));
            Diagnostic { at: at(*place), message: format!("duplicate key `{name}`{first}; names must be unique") }
        })
        .collect();
    match raw::RawTopology::decode(&doc.value) {
        Err(misfits) => diagnostics.extend(misfits.into_iter().map(|m| {
            let place = if m.at_key { doc.positions.key(&m.path) } else { doc.positions.value(&m.path) };
            Diagnostic { at: at(place.unwrap_or((1, 1))), message: m.message }
        })),
        Ok(raw) => match validate::validate(raw, doc.positions, path) {
            Ok(topology) if diagnostics.is_empty() => return Ok(topology),
            Ok(_) => {}
            Err(d) => diagnostics.extend(d),
        },
    }
    diagnostics.sort_by_key(|d| (d.at.line, d.at.column));
    Err(TopologyError::Invalid(diagnostics))
}
