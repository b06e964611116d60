//! YAML reading for manifests: a position-keeping tree (`tree`) whose scalars are resolved by
//! the YAML 1.2 core schema (`schema`), a serde deserializer over it (`de`), and the map from
//! field paths to positions that validation errors are reported at.

mod de;
mod schema;
mod tree;

pub(crate) use de::from_node;
pub(crate) use schema::ScalarKind;
pub(crate) use tree::{load, Document, Mark, Node, Value};
pub use tree::{MAX_DEPTH, MAX_NODES};

use crate::validate::{child, item, parent};
use std::collections::HashMap;

/// Where each field of a document starts, by path (`spec.ports[1].port`).
pub(crate) struct Positions(HashMap<String, Mark>);

impl Positions {
    /// Records the position of every node under `root`.
    pub(crate) fn of(root: &Node) -> Positions {
        let mut positions = HashMap::new();
        walk(root, String::new(), root.mark, &mut positions);
        Positions(positions)
    }

    /// The position of `path`, or of its nearest ancestor that the document spells out.
    pub(crate) fn find(&self, path: &str) -> Option<Mark> {
        let mut path = Some(path);
        while let Some(p) = path {
            if let Some(mark) = self.0.get(p) {
                return Some(*mark);
            }
            path = parent(p);
        }
        None
    }
}

fn walk(node: &Node, path: String, mark: Mark, positions: &mut HashMap<String, Mark>) {
    match &node.resolved().value {
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                walk(it, item(&path, i), it.mark, positions);
            }
        }
        Value::Map(entries) => {
            for (key, value) in entries {
                if let Some(name) = key.scalar_text() {
                    walk(value, child(&path, name), entry_mark(key, value), positions);
                }
            }
        }
        Value::Scalar(_) | Value::Shared(_) => {}
    }
    positions.entry(path).or_insert(mark);
}

/// Where to point for a mapping entry: at a scalar value itself, but at the key of a
/// collection or an empty value, since that is the line that names the field.
pub(crate) fn entry_mark(key: &Node, value: &Node) -> Mark {
    match &value.resolved().value {
        Value::Scalar(s) if !matches!(s.kind, ScalarKind::Null) => value.mark,
        _ => key.mark,
    }
}
