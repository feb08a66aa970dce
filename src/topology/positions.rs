//! Where each key and value of a topology file sits, by dotted path
//! (`aggregates.customers.events`). serde drops positions once it has built the typed
//! topology, so checks that need the whole file (references, duplicates, co-partitioning)
//! look their `file:line:col` up here.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
pub type LineCol = (usize, usize);

#[derive(Debug, Clone, Default)]
pub struct Positions {
    keys: HashMap<String, LineCol>,
    values: HashMap<String, LineCol>,
    /// Keys that appear twice in one mapping: (path, position of the second one).
    pub duplicates: Vec<(String, LineCol)>,
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    out: Positions,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn at(m: &Marker) -> LineCol {
    // yaml-rust2 counts lines from 1 and columns from 0.
    (m.line(), m.col() + 1)
}

impl Walker {
    /// The path a value starting now belongs to, if a value is expected here.
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut()? {
            Frame::Mapping { path, key } => key.take().map(|k| join(path, &k)),
            Frame::Sequence { path, index } => {
                *index += 1;
                Some(join(path, &(*index - 1).to_string()))
            }
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Mapping { path, key: key @ None }) = self.stack.last_mut() {
                    let full = join(path, &text);
                    if self.out.keys.contains_key(&full) {
                        self.out.duplicates.push((full, at(&mark)));
                    } else {
                        self.out.keys.insert(full, at(&mark));
                    }
                    *key = Some(text);
                } else if let Some(p) = self.value_path() {
                    self.out.values.insert(p, at(&mark));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = if self.stack.is_empty() { Some(String::new()) } else { self.value_path() };
                let path = path.unwrap_or_default();
                if !path.is_empty() {
                    self.out.values.insert(path.clone(), at(&mark));
                }
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Mapping { path, key: None }
                } else {
                    Frame::Sequence { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.value_path();
            }
            _ => {}
        }
    }
}

impl Positions {
    /// Indexes `text`; YAML errors are left to serde, which reports them with a position.
    pub fn of(text: &str) -> Self {
        let mut w = Walker::default();
        let _ = Parser::new_from_str(text).load(&mut w, false);
        w.out
    }

    /// Position of the value at `path`, else of its key.
    pub fn value(&self, path: &str) -> Option<LineCol> {
        self.values.get(path).or_else(|| self.keys.get(path)).copied()
    }

    /// Position of the key at `path`.
    pub fn key(&self, path: &str) -> Option<LineCol> {
        self.keys.get(path).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_values_and_duplicates() {
        let p = Positions::of("a:\n  b: 1\n  c: { d: x }\nl:\n  - q\n  - r\na:\n  z: 2\n");
        assert_eq!(p.key("a.b"), Some((2, 3)));
        assert_eq!(p.value("a.b"), Some((2, 6)));
        assert_eq!(p.value("a.c.d"), Some((3, 11)));
        assert_eq!(p.value("l.1"), Some((6, 5)));
        assert_eq!(p.duplicates, vec![("a".to_string(), (7, 1))]);
    }
}
