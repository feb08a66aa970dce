//! What a store's secondary indexes read from a stored value: the declared top-level
//! fields of its body (a snapshot's `state`, a table entry's `value`) as index keys, and
//! whether an aggregate waits. Rendering the whole query document per value for that was
//! more than half of a full restore (the index is built from every value). A table's JSON
//! value is parsed for the declared fields only, every other field skipped unread; a
//! snapshot's state is serialized field by field and only the declared fields are
//! rendered at all (`from_state`).

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{self, Serialize, Serializer};
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

/// The `wanted` top-level fields of `state` as its JSON rendering would give them, in
/// `wanted` order, without rendering the rest: a struct's or map's fields are offered one
/// by one and only the wanted ones are serialized. Any other shape (an enum, a sequence)
/// is rendered as JSON text and picked from, so the answer is the same either way.
pub fn from_state<T: Serialize + ?Sized>(state: &T, wanted: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut found = vec![None; wanted.len()];
    match state.serialize(Pick { wanted, found: &mut found }) {
        Ok(()) => Ok(wanted.iter().zip(found.iter_mut()).filter_map(|(w, v)| Some((w.clone(), v.take()?))).collect()),
        Err(PickError::Shape) => from_json_object(&serde_json::to_vec(state).map_err(|e| e.to_string())?, wanted),
        Err(PickError::Failed(why)) => Err(why),
    }
}

/// Serializes the top level of a value, keeping the wanted fields' index keys.
struct Pick<'a> {
    wanted: &'a [String],
    found: &'a mut [Option<String>],
}

impl Pick<'_> {
    fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<(), PickError> {
        // Later fields of the same name win, as when the JSON text is parsed.
        if let Some(i) = self.wanted.iter().position(|w| w == name) {
            self.found[i] = index_key(&serde_json::to_value(value).map_err(|e| PickError::Failed(e.to_string()))?);
        }
        Ok(())
    }
}

#[derive(Debug)]
enum PickError {
    /// Not a struct or a map with string keys: pick from the JSON text instead.
    Shape,
    Failed(String),
}

impl fmt::Display for PickError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            PickError::Shape => f.write_str("not a struct or a map with string keys"),
            PickError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for PickError {}

impl ser::Error for PickError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        PickError::Failed(msg.to_string())
    }
}

/// Every shape but a struct, a map, and what JSON renders as its inner value.
macro_rules! other_shape {
    ($($name:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<$ret, PickError> { Err(PickError::Shape) })*
    };
}

impl<'a> Serializer for Pick<'a> {
    type Ok = ();
    type Error = PickError;
    type SerializeSeq = ser::Impossible<(), PickError>;
    type SerializeTuple = ser::Impossible<(), PickError>;
    type SerializeTupleStruct = ser::Impossible<(), PickError>;
    type SerializeTupleVariant = ser::Impossible<(), PickError>;
    type SerializeMap = PickMap<'a>;
    type SerializeStruct = Self;
    type SerializeStructVariant = ser::Impossible<(), PickError>;

    other_shape! {
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u8(u8) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_str(&str) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), PickError> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), PickError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(self, _: &'static str, _: u32, _: &'static str, _: &T) -> Result<(), PickError> {
        Err(PickError::Shape)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<PickMap<'a>, PickError> {
        Ok(PickMap { pick: self, key: None })
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, PickError> {
        Ok(self)
    }
}

impl ser::SerializeStruct for Pick<'_> {
    type Ok = ();
    type Error = PickError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> Result<(), PickError> {
        self.field(name, value)
    }

    fn end(self) -> Result<(), PickError> {
        Ok(())
    }
}

/// A map's entries: string keys only (what JSON writes a key as otherwise is left to it).
struct PickMap<'a> {
    pick: Pick<'a>,
    key: Option<String>,
}

impl ser::SerializeMap for PickMap<'_> {
    type Ok = ();
    type Error = PickError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), PickError> {
        match serde_json::to_value(key) {
            Ok(Value::String(k)) => {
                self.key = Some(k);
                Ok(())
            }
            _ => Err(PickError::Shape),
        }
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PickError> {
        let key = self.key.take().ok_or_else(|| PickError::Failed("a map value without its key".into()))?;
        self.pick.field(&key, value)
    }

    fn end(self) -> Result<(), PickError> {
        Ok(())
    }
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
    use crate::processor::wire::{self, Outcome, Processed, Snapshot};
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

    /// Picking fields while serializing gives what parsing the JSON text gives, for every
    /// shape a state can take: structs (nested, flattened, renamed, skipped fields), maps,
    /// newtypes, options, enums, sequences and scalars.
    #[test]
    fn picking_from_a_state_equals_picking_from_its_json() {
        use std::collections::BTreeMap;
        #[derive(serde::Serialize)]
        struct Inner {
            status: &'static str,
        }
        #[derive(serde::Serialize)]
        struct State {
            #[serde(rename = "status")]
            s: Option<&'static str>,
            n: f64,
            nested: Inner,
            #[serde(skip_serializing_if = "Option::is_none")]
            absent: Option<u8>,
            #[serde(flatten)]
            extra: BTreeMap<String, serde_json::Value>,
        }
        #[derive(serde::Serialize)]
        struct Wrapped(State);
        #[derive(serde::Serialize)]
        enum Shape {
            Unit,
            New(Inner),
            Tuple(u8, u8),
            Fields { status: u8 },
        }
        let fields = wanted(&["status", "n", "nested", "absent", "flag", "x"]);
        let state = || State {
            s: Some("ACTIVE"),
            n: 0.1 + 0.2,
            nested: Inner { status: "NO" },
            absent: None,
            extra: [("flag".to_string(), serde_json::json!(true)), ("x".to_string(), serde_json::Value::Null)].into(),
        };
        fn same<T: serde::Serialize>(value: &T, fields: &[String]) {
            let json = serde_json::to_vec(value).unwrap();
            assert_eq!(from_state(value, fields).unwrap(), from_json_object(&json, fields).unwrap(), "{}", String::from_utf8_lossy(&json));
        }
        same(&state(), &fields);
        assert_eq!(from_state(&state(), &fields).unwrap()[0], ("status".to_string(), "ACTIVE".to_string()));
        same(&State { s: None, ..state() }, &fields);
        same(&Wrapped(state()), &fields);
        same(&Some(state()), &fields);
        same(&BTreeMap::from([("status", 1), ("n", 2)]), &fields);
        same(&BTreeMap::from([(1, 1), (2, 2)]), &fields);
        for shape in [Shape::Unit, Shape::New(Inner { status: "X" }), Shape::Tuple(1, 2), Shape::Fields { status: 3 }] {
            same(&shape, &fields);
        }
        same(&vec![1, 2], &fields);
        same(&"text", &fields);
        same(&3u8, &fields);
        same(&(), &fields);
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
                    // Skipped unread by the index's decoding.
                    recent: vec![Processed { outcome: Outcome::Accepted, command_id: "c-1".into(), version: 3, reason: None }].into(),
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
