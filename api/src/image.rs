//! Image references: `host`, `template:NAME` (an LXC template) or `NAME:TAG` (the image store).

use crate::names::validate_name;
use std::fmt;

const FORMS: &str = "expected `host`, `template:NAME` or `NAME:TAG`";

/// The longest image tag.
const MAX_TAG_LEN: usize = 128;

/// Where a role's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// The board's own /usr, /lib, /bin and /etc, bind-mounted read-only.
    Host,
    /// An LXC template such as `busybox`.
    Template(String),
    /// A root filesystem in the controller's image store.
    Stored { name: String, tag: String },
}

/// Why an image reference is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("must not be empty: {FORMS}")]
    Empty,
    #[error("{value:?} has no tag: {FORMS}")]
    MissingTag { value: String },
    #[error("template name {name:?} {why}")]
    TemplateName { name: String, why: String },
    #[error("image name {name:?} {why}")]
    Name { name: String, why: String },
    #[error("tag {tag:?} must be 1 to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'")]
    Tag { tag: String },
}

impl ImageRef {
    /// Parses an image reference.
    pub fn parse(s: &str) -> Result<ImageRef, ImageRefError> {
        if s.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if s == "host" {
            return Ok(ImageRef::Host);
        }
        if let Some(name) = s.strip_prefix("template:") {
            validate_name(name).map_err(|why| ImageRefError::TemplateName {
                name: name.to_string(),
                why,
            })?;
            return Ok(ImageRef::Template(name.to_string()));
        }
        let Some((name, tag)) = s.split_once(':') else {
            return Err(ImageRefError::MissingTag {
                value: s.to_string(),
            });
        };
        validate_name(name).map_err(|why| ImageRefError::Name {
            name: name.to_string(),
            why,
        })?;
        let tag_ok = !tag.is_empty()
            && tag.len() <= MAX_TAG_LEN
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !tag_ok {
            return Err(ImageRefError::Tag {
                tag: tag.to_string(),
            });
        }
        Ok(ImageRef::Stored {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Host => f.write_str("host"),
            ImageRef::Template(name) => write!(f, "template:{name}"),
            ImageRef::Stored { name, tag } => write!(f, "{name}:{tag}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(ImageRef::parse("host"), Ok(ImageRef::Host));
        assert_eq!(
            ImageRef::parse("template:busybox"),
            Ok(ImageRef::Template("busybox".into()))
        );
        assert_eq!(
            ImageRef::parse("exchange:1.0"),
            Ok(ImageRef::Stored {
                name: "exchange".into(),
                tag: "1.0".into()
            })
        );
        for s in ["host", "template:busybox", "exchange:v2_rc-1"] {
            assert_eq!(ImageRef::parse(s).map(|i| i.to_string()), Ok(s.to_string()));
        }
    }

    #[test]
    fn errors() {
        let cases = [
            ("", "must not be empty"),
            (
                "busybox",
                "has no tag: expected `host`, `template:NAME` or `NAME:TAG`",
            ),
            ("template:", "template name \"\" must not be empty"),
            ("template:Busy", "template name \"Busy\" must be lowercase"),
            (
                "docker.io/nginx:1",
                "image name \"docker.io/nginx\" must not contain '/'",
            ),
            ("app:", "tag \"\" must be"),
            ("app:-x", "tag \"-x\""),
            ("app:a:b", "tag \"a:b\""),
        ];
        for (s, want) in cases {
            let err = ImageRef::parse(s).expect_err(s);
            assert!(err.to_string().contains(want), "{s:?}: {err}");
        }
    }
}
