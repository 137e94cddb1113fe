//! The document tree normalization reads: JSON parsed once into a borrowed tree.
//!
//! [`Doc`] is what `serde_json::Value` is, without its costs on the event path: strings
//! and member names are borrowed from the event's bytes when they have no escapes (no
//! allocation each), and objects are vectors of members in document order (no hash table
//! to build). Parsing uses `serde_json`'s own deserializer, so what is valid, the errors,
//! the recursion limit and the numbers (`u64`, `i64` or `f64`, as `Value` reads them) are
//! exactly those of `serde_json::from_slice::<Value>`; a member name that occurs twice
//! keeps its first position and its last value, as `serde_json`'s `preserve_order` map
//! does.

use std::borrow::Cow;
use std::collections::hash_map::{Entry, HashMap};
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};

/// A JSON document, borrowing from the text it was parsed from (or the `Value` it was
/// made from). Objects hold their members in document order, names unique.
///
/// Equality is structural and, unlike `Value`'s, sensitive to member order.
///
/// ```
/// use normalizer::doc::Doc;
/// let d: Doc<'_> = serde_json::from_slice(br#"{"a": "x", "b": [1, 2.5], "a": "y"}"#).unwrap();
/// let v: serde_json::Value = serde_json::from_slice(br#"{"a": "x", "b": [1, 2.5], "a": "y"}"#).unwrap();
/// assert_eq!(d, normalizer::doc::Doc::from_value(&v));
/// assert_eq!(d.to_string(), r#"{"a":"y","b":[1,2.5]}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Doc<'a> {
    /// `null`.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as `serde_json` reads it.
    Number(Number),
    /// A string.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Doc<'a>>),
    /// An object: members in document order, names unique.
    Object(Vec<(Cow<'a, str>, Doc<'a>)>),
}

/// Objects up to this many members find a repeated name by comparing names; larger
/// ones through a temporary hash index, so a huge object is not quadratic.
const LINEAR_MEMBERS: usize = 32;

impl<'a> Doc<'a> {
    /// The document a `Value` holds, borrowing its strings.
    pub fn from_value(v: &'a Value) -> Doc<'a> {
        match v {
            Value::Null => Doc::Null,
            Value::Bool(b) => Doc::Bool(*b),
            Value::Number(n) => Doc::Number(n.clone()),
            Value::String(s) => Doc::String(Cow::Borrowed(s)),
            Value::Array(a) => Doc::Array(a.iter().map(Doc::from_value).collect()),
            Value::Object(m) => Doc::from_map(m),
        }
    }

    /// The object a `serde_json` map holds, borrowing its strings.
    pub fn from_map(m: &'a Map<String, Value>) -> Doc<'a> {
        Doc::Object(
            m.iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Doc::from_value(v)))
                .collect(),
        )
    }

    /// The document as a `Value` (a deep copy).
    pub fn to_value(&self) -> Value {
        match self {
            Doc::Null => Value::Null,
            Doc::Bool(b) => Value::Bool(*b),
            Doc::Number(n) => Value::Number(n.clone()),
            Doc::String(s) => Value::String(s.to_string()),
            Doc::Array(a) => Value::Array(a.iter().map(Doc::to_value).collect()),
            Doc::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Doc::Null)
    }

    /// Whether this is an object or an array.
    pub fn is_container(&self) -> bool {
        matches!(self, Doc::Object(_) | Doc::Array(_))
    }
}

impl Doc<'static> {
    /// The document a `Value` holds, owning everything.
    pub fn from_owned_value(v: Value) -> Doc<'static> {
        match v {
            Value::Null => Doc::Null,
            Value::Bool(b) => Doc::Bool(b),
            Value::Number(n) => Doc::Number(n),
            Value::String(s) => Doc::String(Cow::Owned(s)),
            Value::Array(a) => Doc::Array(a.into_iter().map(Doc::from_owned_value).collect()),
            Value::Object(m) => Doc::Object(
                m.into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Doc::from_owned_value(v)))
                    .collect(),
            ),
        }
    }
}

/// The member `name` of an object's members. Names are unique, so the first is the one.
pub(crate) fn member<'d, 'a>(m: &'d [(Cow<'a, str>, Doc<'a>)], name: &str) -> Option<&'d Doc<'a>> {
    m.iter().find(|(k, _)| k.as_ref() == name).map(|(_, v)| v)
}

/// A member name, borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Doc<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Doc<'de>, E> {
        Ok(Doc::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Doc<'de>, E> {
        Ok(Doc::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Doc<'de>, E> {
        Ok(Doc::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Doc<'de>, E> {
        // As `Value`: a number that is not finite is null.
        Ok(Number::from_f64(n).map_or(Doc::Null, Doc::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Owned(s)))
    }

    fn visit_none<E>(self) -> Result<Doc<'de>, E> {
        Ok(Doc::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Doc<'de>, D::Error> {
        Deserialize::deserialize(d)
    }

    fn visit_unit<E>(self) -> Result<Doc<'de>, E> {
        Ok(Doc::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Doc<'de>, A::Error> {
        let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0));
        while let Some(x) = a.next_element()? {
            v.push(x);
        }
        Ok(Doc::Array(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Doc<'de>, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Doc<'de>)> = Vec::new();
        // Built once an object outgrows `LINEAR_MEMBERS`: name → position.
        let mut index: Option<HashMap<Cow<'de, str>, usize>> = None;
        while let Some(Key(k)) = a.next_key()? {
            let x: Doc<'de> = a.next_value()?;
            match &mut index {
                None => match members.iter_mut().find(|(name, _)| *name == k) {
                    Some(m) => m.1 = x,
                    None => {
                        members.push((k, x));
                        if members.len() > LINEAR_MEMBERS {
                            index = Some(
                                members
                                    .iter()
                                    .enumerate()
                                    .map(|(i, (name, _))| (name.clone(), i))
                                    .collect(),
                            );
                        }
                    }
                },
                Some(index) => match index.entry(k) {
                    Entry::Occupied(e) => members[*e.get()].1 = x,
                    Entry::Vacant(e) => {
                        let name = e.key().clone();
                        e.insert(members.len());
                        members.push((name, x));
                    }
                },
            }
        }
        Ok(Doc::Object(members))
    }
}

impl Serialize for Doc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Null => s.serialize_unit(),
            Doc::Bool(b) => s.serialize_bool(*b),
            Doc::Number(n) => n.serialize(s),
            Doc::String(x) => s.serialize_str(x),
            Doc::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Doc::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

/// Compact JSON text, as `Value`'s `Display` writes it.
impl fmt::Display for Doc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(text: &str) {
        let d: Doc<'_> = serde_json::from_str(text).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(d, Doc::from_value(&v), "{text}");
        assert_eq!(d.to_value(), v, "{text}");
        assert_eq!(d.to_string(), v.to_string(), "{text}");
    }

    #[test]
    fn parses_as_value_does() {
        both(r#"{"a": 1, "b": -2, "c": 1.5e300, "d": 18446744073709551615, "e": -0.0}"#);
        both(r#"[null, true, false, "x\ny", "\u00e9", {"k\"": {"k\"": 1}}]"#);
        both(r#"{"a": 1, "b": 2, "a": 3, "c": {"a": [], "a": {}}}"#);
        // Past the linear check: a hash index, same result.
        let mut text = String::from("{");
        for i in 0..100 {
            text.push_str(&format!("\"k{}\": {i},", i % 40));
        }
        text.push_str("\"k\\u0031\": \"last\"}");
        both(&text);
        assert!(serde_json::from_str::<Doc<'_>>("1e400").is_err());
    }
}
