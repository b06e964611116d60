//! JSON Schemas of manifests, for `texu schema` and for editors.

use crate::manifest::Manifest;
use crate::role::Role;
use crate::{Kind, API_VERSION};
use schemars::schema_for;
use serde_json::Value;

/// The JSON Schema of a Role.
pub fn role_schema() -> Value {
    let mut schema = schema_for!(Role).to_value();
    pin_header(&mut schema);
    schema
}

/// The JSON Schema of one manifest document (for now, always a Role).
pub fn manifest_json_schema() -> Value {
    let mut schema = schema_for!(Manifest).to_value();
    if let Some(role) = schema.pointer_mut("/$defs/Role") {
        pin_header(role);
    }
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "description".into(),
            Value::String(format!(
                "One Texu manifest document: apiVersion {API_VERSION}, kind {}",
                Kind::Role
            )),
        );
    }
    schema
}

/// Fixes `apiVersion` and `kind` to the only values they may take.
fn pin_header(schema: &mut Value) {
    for (field, value) in [("apiVersion", API_VERSION), ("kind", Kind::Role.as_str())] {
        if let Some(Value::Object(prop)) = schema.pointer_mut(&format!("/properties/{field}")) {
            prop.insert("const".into(), Value::String(value.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_schema_names_the_fields() {
        let schema = role_schema();
        let text = serde_json::to_string(&schema).unwrap_or_default();
        let back: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back, schema);
        assert!(schema.pointer("/properties/spec").is_some(), "{schema:#}");
        assert_eq!(
            schema.pointer("/properties/apiVersion/const"),
            Some(&Value::String(API_VERSION.into()))
        );
        assert_eq!(
            schema.pointer("/additionalProperties"),
            Some(&Value::Bool(false))
        );
        assert!(text.contains("\"maxUnavailable\""));
        assert!(text.contains("\"hostPort\""));
    }

    #[test]
    fn manifest_schema_refers_to_role() {
        let schema = manifest_json_schema();
        let text = serde_json::to_string(&schema).unwrap_or_default();
        assert!(text.contains("\"spec\""), "{schema:#}");
        assert_eq!(
            schema.pointer("/$defs/Role/properties/kind/const"),
            Some(&Value::String("Role".into()))
        );
    }
}
