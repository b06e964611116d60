//! Container names: DNS-1123 labels, checked before a name reaches liblxc or a path.

/// Longest name a DNS-1123 label allows.
pub const MAX_NAME_LEN: usize = 63;

/// Why a string is not a valid container name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("container name is empty")]
    Empty,
    /// The name is longer than a DNS-1123 label.
    #[error("container name {name:?} is longer than {MAX_NAME_LEN} characters")]
    TooLong {
        /// The rejected name.
        name: String,
    },
    /// The name holds a character other than a-z, 0-9 and '-'.
    #[error("container name {name:?} may hold only lowercase letters, digits and '-'")]
    BadCharacter {
        /// The rejected name.
        name: String,
    },
    /// The name starts or ends with '-'.
    #[error("container name {name:?} must start and end with a letter or digit")]
    BadEdge {
        /// The rejected name.
        name: String,
    },
}

/// Checks that `name` is a DNS-1123 label, so it is safe as a file name, a cgroup name and a
/// hostname: it can never hold '/', '.', or anything a shell or liblxc would interpret.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            name: name.to_owned(),
        });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(NameError::BadCharacter {
            name: name.to_owned(),
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::BadEdge {
            name: name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_labels() {
        for name in ["a", "web-0", "cassandra-12", "0abc", &"x".repeat(63)] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_everything_that_could_escape_a_path() {
        for name in [
            "..", ".", "a/b", "../etc", "a.b", "A", "web_0", "a b", "a\0b", "a\nb", "é", "-a", "a-",
        ] {
            assert!(validate_name(name).is_err(), "{name:?} accepted");
        }
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_name(&"x".repeat(64)),
            Err(NameError::TooLong { .. })
        ));
    }
}
