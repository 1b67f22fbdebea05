//! JSON as messages arrive: a document whose objects repeat a name is refused, at any depth.
//! `serde_json` keeps the last of two equal names; a finding saying `"severity": "low"` and then
//! `"severity": "critical"` would mean one thing to quench and another to a scanner or a schema
//! validator that keeps the first. RFC 8259 leaves it open; I-JSON (RFC 7493) forbids it.

use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, Deserialize, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::redact::redact_str;

/// Parses `bytes` as one JSON value with unique names in every object. The error names a
/// repeated name (redacted) and where it is.
pub(crate) fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = deserializer.deserialize_any(UniqueNames)?;
    deserializer.end()?;
    Ok(value)
}

/// A message as it arrives: at most `max_bytes`, then one JSON value with unique names. Errors
/// are redacted (a message may quote a key).
pub(crate) fn message(bytes: &[u8], max_bytes: usize) -> Result<Value, crate::ParseError> {
    if bytes.len() > max_bytes {
        return Err(crate::ParseError::TooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    from_slice(bytes).map_err(|error| crate::ParseError::Json(error.to_string()).redacted())
}

/// A [`Value`] visitor that refuses repeated object names.
struct UniqueNames;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueNames).map(Unique)
    }
}

/// One nested value, parsed by [`UniqueNames`].
struct Unique(Value);

impl<'de> Visitor<'de> for UniqueNames {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if object.contains_key(&name) {
                return Err(de::Error::custom(format_args!(
                    "duplicate name `{}`",
                    redact_str(&name)
                )));
            }
            let Unique(value) = map.next_value()?;
            object.insert(name, value);
        }
        Ok(Value::Object(object))
    }
}
