//! Topology files: the YAML that wires an application (topics, aggregates, stores, codecs,
//! processing settings). Loading checks the file before anything runs; every error names
//! the file, line and column and says what was expected.
//!
//! May use: codec, store (tuning), processor (settings it builds).

mod file;
mod names;
mod needs;
pub mod describe;
mod positions;

pub use needs::{TopicNeed, TopicRole};
pub use positions::Positions;

pub use file::{AggregateNode, HttpSettings, JoinNode, Processing, RekeyNode, StoreSpec, TableNode, TopicSpec, Topology};
pub use names::{changelog_topic, dead_letter_topic, repartition_topic};

use crate::error::Recovery;
use std::fmt;
use std::path::{Path, PathBuf};

/// A topology file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{at}: {message}")]
    Invalid { at: Position, message: String },
}

impl TopologyError {
    pub fn recovery(&self) -> Recovery {
        Recovery::Reject
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
    let positions = Positions::of(text);
    if let Some((key, (line, column))) = positions.duplicates.first() {
        let name = key.rsplit('.').next().unwrap_or(key);
        let first = positions.key(key).map_or(String::new(), |(l, c)| format!(" (first defined at {l}:{c})"));
        return Err(TopologyError::Invalid {
            at: Position { file: path.to_path_buf(), line: *line, column: *column },
            message: format!("duplicate key `{name}`{first}; names must be unique"),
        });
    }
    let mut topology: Topology = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        TopologyError::Invalid {
            at: Position { file: path.to_path_buf(), line, column },
            message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
        }
    })?;
    topology.positions = positions;
    topology.path = path.to_path_buf();
    topology.validate()?;
    Ok(topology)
}
