//! A serde deserializer over a YAML node tree, whose errors know the path and position of the
//! node they are about.
//!
//! Strings are lenient the way operators expect (`cpu: 2`, `PORT: 8080` and `DEBUG: true` all
//! give strings), numbers and booleans are strict (`replicas: "3"` is an error), and an empty
//! value (`labels:`) stands for an empty mapping or sequence. Duplicate keys are errors.

use super::tree::{Mark, Node, Value};
use super::{entry_mark, ScalarKind};
use crate::validate::{child, item};
use serde::de::{self, DeserializeOwned, DeserializeSeed, Unexpected, Visitor};
use std::collections::BTreeMap;
use std::fmt;

/// A typed-decoding failure, with where it happened once known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct DeError {
    pub message: String,
    pub mark: Option<Mark>,
    /// The field, like `spec.ports[0].port`; empty for the whole document.
    pub path: String,
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            mark: None,
            path: String::new(),
        }
    }
}

impl DeError {
    /// The message with its field path in front, as a diagnostic shows it.
    pub fn with_path(&self) -> String {
        if self.path.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.path, self.message)
        }
    }
}

/// Decodes a `T` from the tree at `node`.
pub(crate) fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDe {
        node,
        path: String::new(),
        mark: node.mark,
    })
}

struct NodeDe<'a> {
    node: &'a Node,
    path: String,
    /// Where errors about this node as a whole point.
    mark: Mark,
}

impl<'a> NodeDe<'a> {
    fn target(&self) -> &'a Node {
        self.node.resolved()
    }

    /// Gives an error without a position this node's position and path.
    fn locate(&self, mut error: DeError) -> DeError {
        if error.mark.is_none() {
            error.mark = Some(self.mark);
            error.path.clone_from(&self.path);
        }
        error
    }

    fn unexpected(&self) -> Unexpected<'a> {
        match &self.target().value {
            Value::Scalar(s) => match s.kind {
                ScalarKind::Null => Unexpected::Other("null"),
                ScalarKind::Bool(b) => Unexpected::Bool(b),
                ScalarKind::Int(i) => Unexpected::Signed(i),
                ScalarKind::UInt(u) => Unexpected::Unsigned(u),
                ScalarKind::Float(f) => Unexpected::Float(f),
                ScalarKind::Str => Unexpected::Str(&s.text),
            },
            Value::Seq(_) => Unexpected::Seq,
            Value::Map(_) | Value::Shared(_) => Unexpected::Map,
        }
    }

    fn invalid_type<V: Visitor<'a>>(&self, visitor: &V) -> DeError {
        self.locate(de::Error::invalid_type(self.unexpected(), visitor))
    }

    fn visit_map<V: Visitor<'a>>(
        &self,
        entries: &'a [(Node, Node)],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        check_duplicate_keys(entries, &self.path)?;
        visitor
            .visit_map(MapDe {
                entries: entries.iter(),
                path: &self.path,
                value: None,
            })
            .map_err(|e| self.locate(e))
    }

    fn visit_seq<V: Visitor<'a>>(
        &self,
        items: &'a [Node],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor
            .visit_seq(SeqDe {
                items: items.iter().enumerate(),
                path: &self.path,
            })
            .map_err(|e| self.locate(e))
    }
}

fn check_duplicate_keys(entries: &[(Node, Node)], path: &str) -> Result<(), DeError> {
    let mut seen = BTreeMap::new();
    for (key, _) in entries {
        if let Some(text) = key.scalar_text() {
            if let Some(first) = seen.insert(text, key.mark) {
                return Err(DeError {
                    message: format!("duplicate key {text:?}, first at line {}", first.line),
                    mark: Some(key.mark),
                    path: child(path, text),
                });
            }
        }
    }
    Ok(())
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
                self.deserialize_any(visitor)
            }
        )*
    };
}

/// Integer targets: a non-number is "expected an integer", not "expected i64".
macro_rules! integer {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
                self.number(visitor, false)
            }
        )*
    };
}

impl<'a> NodeDe<'a> {
    /// Numbers go to the visitor, which checks their range; anything else is a type error.
    fn number<V: Visitor<'a>>(self, visitor: V, float: bool) -> Result<V::Value, DeError> {
        let numeric = match &self.target().value {
            Value::Scalar(s) => match s.kind {
                ScalarKind::Int(_) | ScalarKind::UInt(_) => true,
                ScalarKind::Float(_) => float,
                _ => false,
            },
            _ => false,
        };
        if numeric {
            return de::Deserializer::deserialize_any(self, visitor);
        }
        let expected = if float { "a number" } else { "an integer" };
        Err(self.locate(de::Error::invalid_type(self.unexpected(), &expected)))
    }
}

impl<'a> de::Deserializer<'a> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.target();
        match &node.value {
            Value::Scalar(s) => match s.kind {
                ScalarKind::Null => visitor.visit_unit(),
                ScalarKind::Bool(b) => visitor.visit_bool(b),
                ScalarKind::Int(i) => visitor.visit_i64(i),
                ScalarKind::UInt(u) => visitor.visit_u64(u),
                ScalarKind::Float(f) => visitor.visit_f64(f),
                ScalarKind::Str => visitor.visit_borrowed_str(&s.text),
            }
            .map_err(|e| self.locate(e)),
            Value::Seq(items) => self.visit_seq(items, visitor),
            Value::Map(entries) => self.visit_map(entries, visitor),
            Value::Shared(_) => Err(self.invalid_type(&visitor)),
        }
    }

    forward_to_any! { deserialize_bool deserialize_bytes deserialize_byte_buf }

    integer! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    }

    fn deserialize_f32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.number(visitor, true)
    }

    fn deserialize_f64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.number(visitor, true)
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    /// Any scalar but null reads as its text.
    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.target().value {
            Value::Scalar(s) if s.kind != ScalarKind::Null => visitor
                .visit_borrowed_str(&s.text)
                .map_err(|e| self.locate(e)),
            Value::Scalar(_) => Err(self.invalid_type(&visitor)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.target().value {
            Value::Scalar(s) if s.kind == ScalarKind::Null => {
                visitor.visit_none().map_err(|e| self.locate(e))
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.target().value {
            Value::Scalar(s) if s.kind == ScalarKind::Null => {
                visitor.visit_unit().map_err(|e| self.locate(e))
            }
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_empty_null() {
            return self.visit_seq(&[], visitor);
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple<V: Visitor<'a>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.target().value {
            Value::Map(entries) => self.visit_map(entries, visitor),
            _ if self.node.is_empty_null() => self.visit_map(&[], visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    /// Structs come only from mappings: a sequence never fills fields by position.
    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    /// Enums are unit variants written as strings, like `protocol: udp`.
    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.target().value {
            Value::Scalar(s) if s.kind != ScalarKind::Null => visitor
                .visit_enum(de::value::BorrowedStrDeserializer::new(&s.text))
                .map_err(|e| self.locate(e)),
            _ => Err(self.locate(de::Error::invalid_type(self.unexpected(), &OneOf(variants)))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct OneOf(&'static [&'static str]);

impl de::Expected for OneOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(|v| format!("`{v}`")).collect();
        write!(f, "one of {}", names.join(", "))
    }
}

struct SeqDe<'a, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: &'p str,
}

impl<'a> de::SeqAccess<'a> for SeqDe<'a, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(NodeDe {
            node,
            path: item(self.path, i),
            mark: node.mark,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a, 'p> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    path: &'p str,
    value: Option<(&'a Node, &'a Node)>,
}

impl<'a> de::MapAccess<'a> for MapDe<'a, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((key, value));
        seed.deserialize(NodeDe {
            node: key,
            path: child(self.path, key.scalar_text().unwrap_or("?")),
            mark: key.mark,
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((key, value)) = self.value.take() else {
            return Err(de::Error::custom("a value was asked for before its key"));
        };
        seed.deserialize(NodeDe {
            node: value,
            path: child(self.path, key.scalar_text().unwrap_or("?")),
            mark: entry_mark(key, value),
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::load;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        count: i64,
        #[serde(default)]
        ratio: f64,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default)]
        maybe: Option<u16>,
        #[serde(default)]
        on: bool,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        port: u16,
        #[serde(default)]
        proto: Proto,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Proto {
        #[default]
        Tcp,
        Udp,
    }

    fn decode(text: &str) -> Result<Sample, DeError> {
        let docs = load(text);
        let doc = docs
            .into_iter()
            .next()
            .and_then(Result::ok)
            .expect("one loadable document");
        from_node(&doc.root)
    }

    fn error(text: &str) -> (String, usize, usize) {
        let e = decode(text).expect_err("decoding fails");
        let mark = e.mark.unwrap_or_default();
        (e.with_path(), mark.line, mark.column)
    }

    #[test]
    fn decodes() {
        let s = decode(
            "name: 123\ncount: 3\nratio: 2\nenv: {A: 1, B: true, C: x}\nitems:\n- port: 80\n  proto: udp\nmaybe: ~\non: true\n",
        )
        .expect("decodes");
        assert_eq!(s.name, "123");
        assert_eq!(s.count, 3);
        assert_eq!(s.ratio, 2.0);
        assert_eq!(s.env["A"], "1");
        assert_eq!(s.env["B"], "true");
        assert_eq!(
            s.items,
            vec![Inner {
                port: 80,
                proto: Proto::Udp
            }]
        );
        assert_eq!(s.maybe, None);
        assert!(s.on);
        let empty = decode("name: x\nenv:\nitems:\n").expect("empty values");
        assert!(empty.env.is_empty() && empty.items.is_empty());
    }

    #[test]
    fn errors_point_at_nodes() {
        let cases: &[(&str, &str, usize, usize)] = &[
            (
                "name: x\ncount: three\n",
                "count: invalid type: string \"three\", expected an integer",
                2,
                8,
            ),
            (
                "name: x\ncount: 1.5\n",
                "count: invalid type: floating point `1.5`, expected an integer",
                2,
                8,
            ),
            (
                "name: x\nratio: [1]\n",
                "ratio: invalid type: sequence, expected a number",
                2,
                1,
            ),
            (
                "name: x\ncount: \"3\"\n",
                "count: invalid type: string \"3\"",
                2,
                8,
            ),
            (
                "name: x\nbogus: 1\n",
                "bogus: unknown field `bogus`, expected one of",
                2,
                1,
            ),
            (
                "name: x\nitems:\n- port: 80\n  extra: 1\n",
                "items[0].extra: unknown field `extra`",
                4,
                3,
            ),
            (
                "name: x\nitems:\n- port: 70000\n",
                "items[0].port: invalid value: integer `70000`, expected u16",
                3,
                9,
            ),
            (
                "name: x\nitems:\n- port: 1\n  proto: sctp\n",
                "items[0].proto: unknown variant `sctp`, expected `tcp` or `udp`",
                4,
                10,
            ),
            (
                "name: x\nitems:\n- port: 1\n  proto: [a]\n",
                "items[0].proto: invalid type: sequence, expected one of `tcp`, `udp`",
                4,
                3,
            ),
            (
                "name: x\nenv: [a, b]\n",
                "env: invalid type: sequence, expected a map",
                2,
                1,
            ),
            (
                "name: x\nitems: {port: 1}\n",
                "items: invalid type: map, expected a sequence",
                2,
                1,
            ),
            ("count: 1\n", "missing field `name`", 1, 1),
            (
                "name: x\nitems:\n- {}\n",
                "items[0]: missing field `port`",
                3,
                3,
            ),
            (
                "name: x\nname: y\n",
                "name: duplicate key \"name\", first at line 1",
                2,
                1,
            ),
            (
                "name: x\nenv:\n  A: 1\n  A: 2\n",
                "env.A: duplicate key \"A\", first at line 3",
                4,
                3,
            ),
            (
                "name:\n",
                "name: invalid type: null, expected a string",
                1,
                1,
            ),
            (
                "name: x\non: yes\n",
                "on: invalid type: string \"yes\", expected a boolean",
                2,
                5,
            ),
            (
                "name: x\nitems: [[1]]\n",
                "items[0]: invalid type: sequence, expected struct Inner",
                2,
                9,
            ),
            (
                "- a\n",
                "invalid type: sequence, expected struct Sample",
                1,
                1,
            ),
        ];
        for (text, want, line, column) in cases {
            let (message, l, c) = error(text);
            assert!(
                message.starts_with(want),
                "{text:?}: {message:?} does not start with {want:?}"
            );
            assert_eq!((l, c), (*line, *column), "{text:?}: {message}");
        }
    }

    #[test]
    fn aliases_decode_as_their_anchors() {
        let s = decode("name: &n app\nenv: {A: *n}\n").expect("decodes");
        assert_eq!(s.env["A"], "app");
    }
}
