//! Reads a topology file's YAML once, with yaml-rust2 (maintained; serde_yaml 0.9 is
//! deprecated), into two things: a JSON value that serde turns into the file's schema, and
//! the position of every key and value, so that checks made after serde has dropped
//! positions can still say `file:line:col`.
//!
//! Plain scalars are resolved as YAML 1.2's core schema does (`4` is a number, `true` a
//! boolean, `~` null); quoted ones stay strings, so `partitions: "4"` is a type error, as
//! it would be with any YAML library.

use super::positions::{LineCol, Positions};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

/// A parsed topology file.
#[derive(Debug)]
pub struct Document {
    pub value: Value,
    pub positions: Positions,
}

/// Text that is not YAML, or YAML a topology cannot be (a mapping as a key).
#[derive(Debug)]
pub struct SyntaxError {
    pub at: LineCol,
    pub message: String,
}

/// Parses `text` (one document).
pub fn read(text: &str) -> Result<Document, SyntaxError> {
    let mut b = Builder::default();
    Parser::new_from_str(text).load(&mut b, false).map_err(|e| SyntaxError {
        at: at(e.marker()),
        message: e.info().to_string(),
    })?;
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok(Document { value: b.root.unwrap_or(Value::Null), positions: b.positions })
}

enum Frame {
    Mapping { path: String, anchor: usize, entries: Map<String, Value>, key: Option<String> },
    Sequence { path: String, anchor: usize, items: Vec<Value> },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    anchors: HashMap<usize, Value>,
    positions: Positions,
    error: Option<SyntaxError>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn at(m: &Marker) -> LineCol {
    // yaml-rust2 counts lines from 1 and columns from 0.
    (m.line(), m.col() + 1)
}

/// A scalar as YAML 1.2's core schema reads it.
fn scalar(text: String, style: TScalarStyle, tagged_str: bool) -> Value {
    if style != TScalarStyle::Plain || tagged_str {
        return Value::String(text);
    }
    match Yaml::from_str(&text) {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::Number(i.into()),
        Yaml::Real(r) => r.parse::<f64>().ok().and_then(Number::from_f64).map_or(Value::String(text), Value::Number),
        _ => Value::String(text),
    }
}

impl Builder {
    /// The path of a value that starts now.
    fn value_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Mapping { path, key, .. }) => join(path, key.as_deref().unwrap_or_default()),
            Some(Frame::Sequence { path, items, .. }) => join(path, &items.len().to_string()),
        }
    }

    /// True when the next event is a mapping's key.
    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Mapping { key: None, .. }))
    }

    /// A finished value goes into its parent (or becomes the document).
    fn complete(&mut self, value: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Mapping { entries, key, .. }) => {
                // A duplicate key keeps its first value; the duplicate is reported by path.
                let k = key.take().unwrap_or_default();
                entries.entry(k).or_insert(value);
            }
            Some(Frame::Sequence { items, .. }) => items.push(value),
        }
    }

    fn open(&mut self, mark: &Marker, mapping: bool, anchor: usize) {
        if self.expects_key() {
            self.fail(mark, "expected a plain key, found a mapping or sequence used as a key");
        }
        let path = self.value_path();
        if !path.is_empty() {
            self.positions.values.insert(path.clone(), at(mark));
        }
        self.stack.push(if mapping {
            Frame::Mapping { path, anchor, entries: Map::new(), key: None }
        } else {
            Frame::Sequence { path, anchor, items: Vec::new() }
        });
    }

    fn fail(&mut self, mark: &Marker, message: &str) {
        self.error.get_or_insert(SyntaxError { at: at(mark), message: message.to_string() });
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let expects_key = self.expects_key();
                if let Some(Frame::Mapping { path, key, .. }) = self.stack.last_mut().filter(|_| expects_key) {
                    let full = join(path, &text);
                    // yaml-rust2 marks a block mapping's start after its first key; the
                    // mapping starts at that key.
                    if let Some(start) = self.positions.values.get_mut(path.as_str()).filter(|s| **s > at(&mark)) {
                        *start = at(&mark);
                    }
                    if self.positions.keys.contains_key(&full) {
                        self.positions.duplicates.push((full, at(&mark)));
                    } else {
                        self.positions.keys.insert(full, at(&mark));
                    }
                    *key = Some(text);
                } else {
                    self.positions.values.insert(self.value_path(), at(&mark));
                    let tagged_str = tag.is_some_and(|t| t.handle == "tag:yaml.org,2002:" && t.suffix == "str");
                    self.complete(scalar(text, style, tagged_str), anchor);
                }
            }
            Event::MappingStart(anchor, _) => self.open(&mark, true, anchor),
            Event::SequenceStart(anchor, _) => self.open(&mark, false, anchor),
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Frame::Mapping { entries, anchor, .. }) => (Value::Object(entries), anchor),
                    Some(Frame::Sequence { items, anchor, .. }) => (Value::Array(items), anchor),
                    None => return,
                };
                self.complete(value, anchor);
            }
            Event::Alias(id) => {
                if self.expects_key() {
                    self.fail(&mark, "expected a plain key, found an alias");
                    return;
                }
                self.positions.values.insert(self.value_path(), at(&mark));
                let value = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                self.complete(value, 0);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_values_and_duplicates() {
        let d = read("a:\n  b: 1\n  c: { d: x }\nl:\n  - q\n  - r\na:\n  z: 2\n").unwrap();
        let p = &d.positions;
        assert_eq!(p.key("a.b"), Some((2, 3)));
        assert_eq!(p.value("a.b"), Some((2, 6)));
        assert_eq!(p.value("a.c.d"), Some((3, 11)));
        assert_eq!(p.value("l.1"), Some((6, 5)));
        assert_eq!(p.duplicates, vec![("a".to_string(), (7, 1))]);
        assert_eq!(d.value["a"]["b"], serde_json::json!(1), "the first of two duplicate keys wins");
    }

    #[test]
    fn resolves_plain_scalars_and_keeps_quoted_ones_strings() {
        let d = read("n: 4\nq: \"4\"\nb: true\nz: ~\nf: 1.5\ns: json\nx: 0x10\nt: !!str 7\n").unwrap();
        assert_eq!(d.value, serde_json::json!({"n": 4, "q": "4", "b": true, "z": null, "f": 1.5, "s": "json", "x": 16, "t": "7"}));
    }

    #[test]
    fn anchors_and_aliases_copy_values() {
        let d = read("base: &b { partitions: 2 }\nother: *b\n").unwrap();
        assert_eq!(d.value["other"], serde_json::json!({"partitions": 2}));
        assert_eq!(d.positions.value("other"), Some((2, 8)));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = read("a:\n  b: [1, 2\n").unwrap_err();
        assert!(e.at.0 >= 2, "{e:?}");
        assert!(!e.message.is_empty());
        let e = read("? { a: 1 }\n: x\n").unwrap_err();
        assert_eq!(e.at, (1, 3), "{e:?}");
        assert!(e.message.contains("plain key"), "{e:?}");
    }
}
