//! Manifests: what an operator applies, read from YAML with diagnostics that point at the
//! offending line and column, or from a JSON request body.

use crate::role::Role;
use crate::validate::FieldError;
use crate::yaml::{self, Document, Mark, Node, Positions, Value};
use crate::{Kind, API_VERSION};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;

/// The largest manifest text (or JSON body) accepted: 1 MiB.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

const EMPTY_DOCUMENT: &str =
    "empty document: expected a Role with apiVersion, kind, metadata and spec";

/// An object an operator may apply.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Manifest {
    /// A role.
    Role(Role),
}

impl Manifest {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Manifest::Role(_) => Kind::Role,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            Manifest::Role(role) => &role.metadata.name,
        }
    }
}

/// A manifest and the position of its `metadata.name` in its file.
#[derive(Debug, Clone, PartialEq)]
pub struct LocatedManifest {
    pub manifest: Manifest,
    /// 1-based line of `metadata.name` (or of the document).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// A problem in an input file, at a 1-based line and column (0 and 0 when it is about the
/// file as a whole, such as a file that cannot be read).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic about the file as a whole.
    pub fn whole_file(file: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.into(),
            line: 0,
            column: 0,
            message: message.into(),
        }
    }

    fn at(file: &str, mark: Mark, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_string(),
            line: mark.line,
            column: mark.column,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for Diagnostic {}

/// Reads every manifest in `text` (YAML, documents separated by `---`).
///
/// `file` only names the input in diagnostics. All problems of all documents are reported, in
/// the order they appear; if there is any, no manifest is returned.
pub fn parse_manifests(file: &str, text: &str) -> Result<Vec<Manifest>, Vec<Diagnostic>> {
    parse_manifests_located(file, text)
        .map(|located| located.into_iter().map(|l| l.manifest).collect())
}

/// Like [`parse_manifests`], with where each manifest's name is written.
pub fn parse_manifests_located(
    file: &str,
    text: &str,
) -> Result<Vec<LocatedManifest>, Vec<Diagnostic>> {
    let first = Mark { line: 1, column: 1 };
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(vec![Diagnostic::at(
            file,
            first,
            format!(
                "manifest is {} bytes, more than the limit of {MAX_MANIFEST_BYTES} bytes (1 MiB)",
                text.len()
            ),
        )]);
    }
    let documents = yaml::load(text);
    if documents.is_empty() {
        return Err(vec![Diagnostic::at(file, first, EMPTY_DOCUMENT)]);
    }
    let mut manifests = Vec::new();
    let mut diagnostics = Vec::new();
    let mut seen: HashMap<(Kind, String), Mark> = HashMap::new();
    for document in documents {
        let decoded = match document {
            Err(e) => Err(vec![(e.mark(), e.to_string())]),
            Ok(document) => decode(&document),
        };
        match decoded {
            Ok((manifest, mark)) => {
                let key = (manifest.kind(), manifest.name().to_string());
                if let Some(first) = seen.insert(key, mark) {
                    diagnostics.push(Diagnostic::at(
                        file,
                        mark,
                        format!(
                            "{} {} is defined twice in this file, first at line {}",
                            manifest.kind(),
                            manifest.name(),
                            first.line
                        ),
                    ));
                }
                manifests.push(LocatedManifest {
                    manifest,
                    line: mark.line,
                    column: mark.column,
                });
            }
            Err(problems) => diagnostics.extend(
                problems
                    .into_iter()
                    .map(|(mark, message)| Diagnostic::at(file, mark, message)),
            ),
        }
    }
    if diagnostics.is_empty() {
        Ok(manifests)
    } else {
        diagnostics.sort();
        Err(diagnostics)
    }
}

type Problems = Vec<(Mark, String)>;

/// Decodes and validates one document; returns the manifest and where its name is.
fn decode(document: &Document) -> Result<(Manifest, Mark), Problems> {
    let root = document.root.resolved();
    let entries = match &root.value {
        Value::Map(entries) => entries,
        Value::Scalar(_) if root.is_empty_null() => {
            return Err(vec![(document.start, EMPTY_DOCUMENT.to_string())])
        }
        other => {
            let found = match other {
                Value::Seq(_) => "a sequence",
                _ => "a single value",
            };
            return Err(vec![(
                root.mark,
                format!(
                    "expected a mapping with apiVersion, kind, metadata and spec, found {found}"
                ),
            )]);
        }
    };
    check_header(root, entries)?;
    let role: crate::Role =
        yaml::from_node(root).map_err(|e| vec![(e.mark.unwrap_or(root.mark), e.with_path())])?;
    let positions = Positions::of(root);
    let locate = |error: &FieldError| positions.find(&error.path).unwrap_or(root.mark);
    role.validate().map_err(|errors| {
        errors
            .iter()
            .map(|e| (locate(e), e.to_string()))
            .collect::<Problems>()
    })?;
    let name_mark = positions.find("metadata.name").unwrap_or(root.mark);
    Ok((Manifest::Role(role), name_mark))
}

/// Checks `apiVersion` and `kind` before anything else, so that a foreign or misplaced object
/// gets one clear error instead of a list of unknown fields.
fn check_header(root: &Node, entries: &[(Node, Node)]) -> Result<(), Problems> {
    let field = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(name))
            .map(|(_, v)| v)
    };
    let mut problems = Problems::new();
    match field("apiVersion") {
        None => problems.push((
            root.mark,
            format!("missing field `apiVersion`: expected apiVersion: {API_VERSION}"),
        )),
        Some(v) => match v.scalar_text() {
            Some(API_VERSION) => {}
            Some(other) if !v.is_empty_null() => problems.push((
                v.mark,
                format!("apiVersion: must be {API_VERSION}, got {other:?}"),
            )),
            _ => problems.push((
                v.mark,
                format!("apiVersion: must be {API_VERSION}, a string"),
            )),
        },
    }
    match field("kind") {
        None => problems.push((
            root.mark,
            "missing field `kind`: expected kind: Role".into(),
        )),
        Some(v) => match v.scalar_text() {
            Some("Role") => {}
            Some(kind @ ("Node" | "Container")) => problems.push((
                v.mark,
                format!("kind {kind} is created by agents, not applied"),
            )),
            Some(other) if !v.is_empty_null() => problems.push((
                v.mark,
                format!("kind: unknown kind {other:?}, expected Role"),
            )),
            _ => problems.push((v.mark, "kind: must be Role, a string".into())),
        },
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Why a JSON request body is not an acceptable Role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleBodyError {
    #[error("request body is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("request body is not a valid Role: {message}")]
    Json {
        /// 1-based line of the problem (0 if unknown).
        line: usize,
        /// 1-based column of the problem (0 if unknown).
        column: usize,
        /// serde_json's description, with its position.
        message: String,
    },
    #[error("role is invalid: {}", join(.0))]
    Invalid(Vec<FieldError>),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads and validates a Role sent as JSON, as `PUT /v1/roles/{name}` receives it.
pub fn parse_json_role(body: &[u8]) -> Result<Role, RoleBodyError> {
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(RoleBodyError::TooLarge {
            size: body.len(),
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let role: Role = serde_json::from_slice(body).map_err(|e| RoleBodyError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    role.validate().map_err(RoleBodyError::Invalid)?;
    Ok(role)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::RoleSpec;

    const GOOD: &str = "\
apiVersion: texu.io/v1
kind: Role
metadata:
  name: app
spec:
  image: host
";

    fn diagnostics(text: &str) -> Vec<String> {
        match parse_manifests("m.yaml", text) {
            Ok(m) => panic!("parsed: {m:?}"),
            Err(d) => d.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn parses_a_role() {
        let manifests = parse_manifests("m.yaml", GOOD).expect("parses");
        assert_eq!(
            manifests,
            vec![Manifest::Role(Role::new(
                "app",
                RoleSpec::with_image("host")
            ))]
        );
        assert_eq!(manifests[0].kind(), Kind::Role);
        assert_eq!(manifests[0].name(), "app");
        let located = parse_manifests_located("m.yaml", GOOD).expect("parses");
        assert_eq!((located[0].line, located[0].column), (4, 9));
    }

    #[test]
    fn header_errors() {
        let d = diagnostics("apiVersion: apps/v1\nkind: Deployment\nspec: {}\n");
        assert_eq!(
            d,
            [
                "m.yaml:1:13: apiVersion: must be texu.io/v1, got \"apps/v1\"",
                "m.yaml:2:7: kind: unknown kind \"Deployment\", expected Role",
            ]
        );
        let d = diagnostics(&GOOD.replace("kind: Role", "kind: Node"));
        assert_eq!(
            d,
            ["m.yaml:2:7: kind Node is created by agents, not applied"]
        );
        let d = diagnostics("metadata: {name: x}\n");
        assert_eq!(d.len(), 2);
        assert!(
            d[0].starts_with("m.yaml:1:1: missing field `apiVersion`"),
            "{d:?}"
        );
        assert_eq!(diagnostics("[1]\n"), ["m.yaml:1:1: expected a mapping with apiVersion, kind, metadata and spec, found a sequence"]);
    }

    #[test]
    fn empty_inputs() {
        for text in ["", "# nothing here\n", "\n\n"] {
            assert_eq!(diagnostics(text), [format!("m.yaml:1:1: {EMPTY_DOCUMENT}")]);
        }
        let d = diagnostics(&format!("{GOOD}---\n"));
        assert_eq!(d, [format!("m.yaml:7:1: {EMPTY_DOCUMENT}")]);
    }

    #[test]
    fn validation_errors_point_at_fields() {
        let text = format!(
            "{GOOD}  replicas: -1\n  ports:\n  - name: web\n    port: 70000\n  stateful: true\n"
        );
        assert_eq!(
            diagnostics(&text),
            [
                "m.yaml:7:13: spec.replicas: must be 0 or more, got -1",
                "m.yaml:10:11: spec.ports[0].port: must be between 1 and 65535, got 70000",
                "m.yaml:11:13: spec.stateful: a stateful role needs at least one volume in spec.volumes",
            ]
        );
    }

    #[test]
    fn every_document_is_reported() {
        let bad_type = GOOD.replace("image: host", "image: host\n  replicas: many");
        let bad_name = GOOD.replace("name: app", "name: App");
        let text = format!("{bad_type}---\n{GOOD}---\nfoo: [\n---\n{bad_name}");
        let d = diagnostics(&text);
        assert_eq!(d.len(), 3, "{d:#?}");
        assert!(
            d[0].starts_with("m.yaml:7:13: spec.replicas: invalid type: string \"many\""),
            "{d:?}"
        );
        assert!(d[1].starts_with("m.yaml:17:1: invalid YAML"), "{d:?}");
        assert!(
            d[2].starts_with("m.yaml:21:9: metadata.name: must be lowercase"),
            "{d:?}"
        );
    }

    #[test]
    fn duplicates_in_one_file() {
        let d = diagnostics(&format!("{GOOD}---\n{GOOD}"));
        assert_eq!(
            d,
            ["m.yaml:11:9: Role app is defined twice in this file, first at line 4"]
        );
    }

    #[test]
    fn size_limit() {
        let text = format!("{GOOD}#{}\n", "x".repeat(MAX_MANIFEST_BYTES));
        let d = diagnostics(&text);
        let want = format!(
            "m.yaml:1:1: manifest is {} bytes, more than the limit of 1048576 bytes (1 MiB)",
            text.len()
        );
        assert_eq!(d, [want]);
    }

    #[test]
    fn round_trips_through_yaml_and_json() {
        let mut spec = RoleSpec::with_image("exchange:1.0");
        spec.replicas = 3;
        spec.env.insert("PORT".into(), "8080".into());
        let role = Role::new("app", spec);
        let yaml = serde_yaml_ng::to_string(&Manifest::Role(role.clone())).unwrap_or_default();
        assert_eq!(
            parse_manifests("m.yaml", &yaml),
            Ok(vec![Manifest::Role(role.clone())])
        );
        let json = serde_json::to_vec(&role).unwrap_or_default();
        assert_eq!(parse_json_role(&json), Ok(role));
    }

    #[test]
    fn json_bodies() {
        let err = parse_json_role(
            b"{\"apiVersion\": \"texu.io/v1\",\n \"kind\": \"Role\", \"bogus\": 1}",
        )
        .expect_err("unknown field");
        assert!(
            matches!(&err, RoleBodyError::Json { line: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let body = br#"{"apiVersion":"texu.io/v1","kind":"Role","metadata":{"name":"A"},"spec":{"image":"host","replicas":-1}}"#;
        let err = parse_json_role(body).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "role is invalid: metadata.name: must be lowercase letters, digits and '-', found 'A'; spec.replicas: must be 0 or more, got -1"
        );
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            parse_json_role(&big),
            Err(RoleBodyError::TooLarge { .. })
        ));
    }

    #[test]
    fn diagnostic_display() {
        let d = Diagnostic::whole_file("x.yaml", "cannot read: gone");
        assert_eq!(d.to_string(), "x.yaml: cannot read: gone");
        let d = Diagnostic::at("x.yaml", Mark { line: 3, column: 5 }, "bad");
        assert_eq!(d.to_string(), "x.yaml:3:5: bad");
    }
}
