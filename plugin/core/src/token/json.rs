//! Strict JSON for tokens and key sets: an object at the top, and no object anywhere that
//! repeats a member name. `serde_json` alone keeps the last of two equal names, so two
//! readers of the same token (this verifier and the issuer's audit, say) could see two
//! different claims; a token that does this is refused instead.
//!
//! Names are compared after `\u` escapes are decoded (`"a"` and `"\u0061"` are the same
//! name). Nesting is bounded by `serde_json`'s recursion limit (128), so no input can
//! exhaust the stack.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why strict parsing refused a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not JSON, not UTF-8, trailing bytes, or not an object at the top.
    Invalid,
    /// Some object repeats a member name.
    Duplicate,
}

/// Parses `bytes` as a JSON object, refusing repeated member names at every level.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match serde_json::from_slice::<NoDuplicates>(bytes) {
        Ok(NoDuplicates) => {}
        // The checker accepts every JSON value; its only data error is a repeated name.
        Err(e) if e.is_data() => return Err(JsonError::Duplicate),
        Err(_) => return Err(JsonError::Invalid),
    }
    serde_json::from_slice::<Map<String, Value>>(bytes).map_err(|_| JsonError::Invalid)
}

/// A value that deserializes from any JSON and fails only on a repeated member name.
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_none<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }

    // With serde_json's `arbitrary_precision`, a number arrives here as a one-member map;
    // it has no duplicate, so it passes like any other object.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if !seen.insert(name) {
                return Err(de::Error::custom("repeated member name"));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_are_refused_at_every_depth_and_after_unescaping() {
        assert!(parse_object(br#"{"a":1,"b":{"c":[{"d":1}]}}"#).is_ok());
        for doc in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"x":{"a":1,"a":1}}"#,
            r#"{"x":[1,{"a":1,"b":2,"a":3}]}"#,
        ] {
            assert_eq!(
                parse_object(doc.as_bytes()),
                Err(JsonError::Duplicate),
                "{doc}"
            );
        }
    }

    #[test]
    fn only_an_object_is_accepted() {
        for doc in [
            &b"[]"[..],
            b"1",
            b"\"s\"",
            b"",
            b"{",
            b"\xEF\xBB\xBF{}",
            b"{} x",
            b"{\"a\":\"\xff\"}",
        ] {
            assert_eq!(parse_object(doc), Err(JsonError::Invalid));
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_object(deep.as_bytes()), Err(JsonError::Invalid));
    }

    #[test]
    fn numbers_keep_working_with_arbitrary_precision() {
        let map =
            parse_object(br#"{"exp":1700000000,"f":1.5,"big":123456789012345678901234567890}"#)
                .unwrap();
        assert_eq!(map["exp"].as_u64(), Some(1_700_000_000));
    }
}
