//! Names: DNS-1123 labels for objects, C identifiers for environment variables, label keys.
//!
//! Object names become container names, hostnames and paths on a board, so only the narrow
//! DNS-1123 label form is accepted. Each check returns why a name is refused, in words.

/// The longest object name, as DNS allows for one label.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.contains('/') {
        return Err("must not contain '/'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "must be lowercase letters, digits and '-', found {}",
            describe_char(c)
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must start and end with a lowercase letter or digit".into());
    }
    Ok(())
}

/// Checks an environment variable name: a C identifier, `[A-Za-z_][A-Za-z0-9_]*`.
pub fn validate_env_key(key: &str) -> Result<(), String> {
    let mut chars = key.chars();
    match chars.next() {
        None => return Err("must not be empty".into()),
        Some(c) if c.is_ascii_digit() => return Err("must not start with a digit".into()),
        Some(_) => {}
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!(
            "must be letters, digits and '_' (a C identifier), found {}",
            describe_char(c)
        ));
    }
    Ok(())
}

/// Checks a label key: an optional DNS subdomain prefix and `/`, then a name of at most 63
/// characters (letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit).
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || prefix.len() > 253 {
            return Err("prefix before '/' must be 1 to 253 characters".into());
        }
        for part in prefix.split('.') {
            validate_name(part)
                .map_err(|why| format!("prefix before '/' must be a DNS subdomain: {why}"))?;
        }
    }
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    validate_label_value(name)
}

/// Checks a label value: empty, or at most 63 letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "must be letters, digits, '-', '_' and '.', found {}",
            describe_char(c)
        ));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters, got {}",
            value.len()
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(value.chars().next()) || !alnum(value.chars().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Checks every name in a container that a board turns into a path or a name of its own:
/// the container's, its role's, its nodes' and its volumes'. An agent calls it on what arrives
/// from the controller before it touches anything.
pub fn validate_container_names(c: &crate::Container) -> Result<(), String> {
    let spec = &c.spec;
    let mut names: Vec<(&str, &str)> = vec![
        ("metadata.name", c.metadata.name.as_str()),
        ("spec.role", spec.role.as_str()),
    ];
    names.extend(spec.node.as_deref().map(|n| ("spec.node", n)));
    names.extend(
        spec.handoff
            .as_ref()
            .map(|h| ("spec.handoff.node", h.node.as_str())),
    );
    names.extend(spec.moved_from.as_deref().map(|n| ("spec.movedFrom", n)));
    if let Some(template) = &spec.template {
        names.extend(
            template
                .volumes
                .iter()
                .map(|v| ("spec.template.volumes[].name", v.name.as_str())),
        );
    }
    for (field, name) in names {
        validate_name(name).map_err(|why| format!("{field} {name:?}: {why}"))?;
    }
    Ok(())
}

fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".into(),
        c if c.is_control() => format!("control character {:?}", c),
        c => format!("'{c}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let long = "a".repeat(63);
        for good in ["a", "app", "cassandra-0", "0", "a-b-c", long.as_str()] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        let too_long = "a".repeat(64);
        let cases = [
            ("", "must not be empty"),
            ("../x", "must not contain '/'"),
            ("a/b", "must not contain '/'"),
            ("A_B", "lowercase letters, digits and '-', found 'A'"),
            ("a_b", "found '_'"),
            ("a.b", "found '.'"),
            ("a b", "found a space"),
            ("-a", "must start and end"),
            ("a-", "must start and end"),
            (too_long.as_str(), "at most 63 characters, got 64"),
            ("é", "found 'é'"),
        ];
        for (name, want) in cases {
            let err = validate_name(name).expect_err(name);
            assert!(err.contains(want), "{name:?}: {err}");
        }
    }

    #[test]
    fn container_names() {
        let mut c = crate::Container::new("app-0", crate::ContainerSpec::default());
        c.spec.role = "app".into();
        c.spec.node = Some("board1".into());
        assert_eq!(validate_container_names(&c), Ok(()));
        c.metadata.name = "../x".into();
        let err = validate_container_names(&c).unwrap_err();
        assert!(
            err.starts_with("metadata.name \"../x\": must not contain '/'"),
            "{err}"
        );
        c.metadata.name = "app-0".into();
        c.spec.node = Some("a/b".into());
        let err = validate_container_names(&c).unwrap_err();
        assert!(err.starts_with("spec.node \"a/b\""), "{err}");
        c.spec.node = None;
        c.spec.role = String::new();
        assert!(validate_container_names(&c)
            .unwrap_err()
            .starts_with("spec.role"));
    }

    #[test]
    fn env_keys() {
        for good in ["A", "_x", "JAVA_OPTS", "a1"] {
            assert_eq!(validate_env_key(good), Ok(()), "{good}");
        }
        for (bad, want) in [
            ("", "empty"),
            ("1A", "digit"),
            ("A-B", "found '-'"),
            ("A=B", "found '='"),
        ] {
            let err = validate_env_key(bad).expect_err(bad);
            assert!(err.contains(want), "{bad:?}: {err}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for good in ["site", "texu.io/zone", "a_b.c-d", "Rack"] {
            assert_eq!(validate_label_key(good), Ok(()), "{good}");
        }
        for bad in ["", "/x", "texu.io/", "-a", "a b", "Texu.io/x"] {
            assert!(validate_label_key(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_label_value(""), Ok(()));
        assert_eq!(validate_label_value("v1.2"), Ok(()));
        assert!(validate_label_value(".x").is_err());
        assert!(validate_label_value(&"x".repeat(64)).is_err());
    }
}
