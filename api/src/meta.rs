//! Metadata every object carries, and the serde helpers the object types share.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An object's name and labels, and what the server records about it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// The object's name: a DNS-1123 label, unique per kind.
    pub name: String,
    /// Labels, for node selectors and spreading.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Set by the server: bumped each time the spec changes. Ignored on apply.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    /// Set by the server: the store revision of the last change. Ignored on apply.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: i64,
    /// Set by the server: when the object was created (RFC 3339). Ignored on apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

impl ObjectMeta {
    /// Metadata with just a name.
    pub fn named(name: impl Into<String>) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            ..ObjectMeta::default()
        }
    }
}

pub(crate) fn is_zero(n: &i64) -> bool {
    *n == 0
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}
