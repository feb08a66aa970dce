//! What a store's secondary indexes read from a stored value: the declared top-level
//! fields of its body (a snapshot's `state`, a table entry's `value`) as index keys, and
//! whether an aggregate waits. Rendering the whole query document per value for that was
//! more than half of a full restore (the index is built from every value); a snapshot's
//! state is instead written as JSON text once and only the declared fields are parsed
//! back, every other field skipped unread.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// A value's index keys: (index name, field value) pairs, and whether it waits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFields {
    pub fields: Vec<(String, String)>,
    pub awaiting: bool,
}

/// How a field is written in an index key: a string as itself, anything else as its JSON
/// text; null is not indexed.
pub fn index_key(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The index keys of a rendered query document (the general path).
pub fn from_document(doc: &Value, wanted: &[String]) -> IndexFields {
    let body = doc.get("state").or_else(|| doc.get("value"));
    IndexFields {
        fields: wanted.iter().filter_map(|f| Some((f.clone(), index_key(body?.get(f)?)?))).collect(),
        awaiting: doc.get("awaiting_until").is_some(),
    }
}

/// The `wanted` top-level fields of the JSON object `json`, as index keys, in `wanted`
/// order. Not an object: no fields.
pub fn from_json_object(json: &[u8], wanted: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut found: Vec<Option<String>> = de.deserialize_any(Picker(wanted)).map_err(|e| e.to_string())?;
    Ok(wanted.iter().zip(found.iter_mut()).filter_map(|(w, v)| Some((w.clone(), v.take()?))).collect())
}

/// Visits one JSON value; for an object, parses the wanted fields and skips the rest.
struct Picker<'a>(&'a [String]);

impl<'de> Visitor<'de> for Picker<'_> {
    type Value = Vec<Option<String>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut found = vec![None; self.0.len()];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.0.iter().position(|w| *w == key) {
                Some(i) => found[i] = index_key(&map.next_value::<Value>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    // Anything but an object has no fields.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(vec![None; self.0.len()])
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(vec![None; self.0.len()])
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(vec![None; self.0.len()])
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(vec![None; self.0.len()])
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(vec![None; self.0.len()])
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(vec![None; self.0.len()])
    }
    fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(vec![None; self.0.len()])
    }
}

impl<'de> DeserializeSeed<'de> for Picker<'_> {
    type Value = Vec<Option<String>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::customer::{Customer, CustomerAggregate, Status};
    use crate::codec::Format;
    use crate::processor::wire::{self, Snapshot};
    use crate::processor::{SnapshotRenderer, ValueRenderer};

    fn wanted(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_the_wanted_fields_and_skips_the_rest() {
        let json = br#"{"skip":{"deep":[1,{"status":"NO"}]},"status":"ACTIVE","n":3,"none":null,"flag":true}"#;
        let got = from_json_object(json, &wanted(&["status", "n", "none", "flag", "missing"])).unwrap();
        let expected: Vec<(String, String)> =
            [("status", "ACTIVE"), ("n", "3"), ("flag", "true")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(got, expected);
        assert_eq!(from_json_object(b"[1,2]", &wanted(&["status"])).unwrap(), vec![]);
        assert_eq!(from_json_object(b"\"text\"", &wanted(&["status"])).unwrap(), vec![]);
        assert!(from_json_object(b"{\"status\":", &wanted(&["status"])).is_err());
    }

    /// The snapshot renderer's shortcut gives the index exactly what the rendered query
    /// document would, in both snapshot formats, waiting or not.
    #[test]
    fn a_snapshots_index_keys_equal_those_of_its_rendered_document() {
        let fields = wanted(&["status", "name", "email", "absent"]);
        for format in [Format::Json, Format::Protobuf] {
            let renderer = SnapshotRenderer::<CustomerAggregate> { format, _aggregate: std::marker::PhantomData };
            for await_deadline in [None, Some(1_700_000_000_000)] {
                let snap = Snapshot {
                    version: 3,
                    state: Customer { name: "Ada \"Countess\"".into(), email: "ada@example.org".into(), status: Status::Deleted },
                    source_offset: 7,
                    recent: vec![],
                    await_deadline,
                };
                let bytes = wire::encode_snapshot::<CustomerAggregate>(format, &snap);
                let fast = renderer.index_fields(&bytes, &fields).unwrap();
                let general = from_document(&renderer.render(&bytes).unwrap(), &fields);
                assert_eq!(fast, general, "{format:?}");
                assert_eq!(fast.fields[0], ("status".to_string(), "DELETED".to_string()));
                assert_eq!(fast.awaiting, await_deadline.is_some());
            }
        }
    }
}
