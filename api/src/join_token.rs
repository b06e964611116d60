//! The cluster join token's format, k3s style: `K10<sha256 of the CA's DER, hex>::<secret>`.
//! The hash lets a new board check, before it sends the secret, that the controller it reached
//! holds the cluster's CA.

/// What every join token starts with.
pub const JOIN_TOKEN_PREFIX: &str = "K10";

/// A join token split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenParts {
    /// SHA-256 of the cluster CA certificate's DER.
    pub ca_hash: [u8; 32],
    /// The secret after `::`.
    pub secret: String,
}

/// Why a join token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    /// A token from before TLS (`texu-join-...`): it cannot pin the CA.
    #[error(
        "this join token has the old format (no CA hash), so the board could not check who it \
         talks to; take the current one from the controller's DATA_DIR/join.token \
         (it starts with K10)"
    )]
    OldFormat,
    /// Anything else.
    #[error("this is not a join token: expected K10<64 hex digits>::<secret>")]
    Malformed,
}

/// Splits a join token into the CA hash and the secret.
pub fn parse_join_token(token: &str) -> Result<JoinTokenParts, JoinTokenError> {
    let token = token.trim();
    let Some(rest) = token.strip_prefix(JOIN_TOKEN_PREFIX) else {
        return Err(if token.starts_with("texu-join-") {
            JoinTokenError::OldFormat
        } else {
            JoinTokenError::Malformed
        });
    };
    let (hash, secret) = rest.split_once("::").ok_or(JoinTokenError::Malformed)?;
    if hash.len() != 64 || secret.is_empty() || secret.chars().any(char::is_whitespace) {
        return Err(JoinTokenError::Malformed);
    }
    let mut ca_hash = [0u8; 32];
    for (i, byte) in ca_hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16)
            .map_err(|_| JoinTokenError::Malformed)?;
    }
    Ok(JoinTokenParts {
        ca_hash,
        secret: secret.to_string(),
    })
}

/// Puts a join token together from the CA hash (hex) and a secret.
pub fn format_join_token(ca_hash_hex: &str, secret: &str) -> String {
    format!("{JOIN_TOKEN_PREFIX}{ca_hash_hex}::{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_old_ones_are_named() {
        let hash = "ab".repeat(32);
        let token = format_join_token(&hash, "texu-join-123");
        let parts = parse_join_token(&token).unwrap();
        assert_eq!(parts.ca_hash, [0xab; 32]);
        assert_eq!(parts.secret, "texu-join-123");
        assert_eq!(
            parse_join_token("texu-join-0011"),
            Err(JoinTokenError::OldFormat)
        );
        assert_eq!(
            parse_join_token("K10abc::x"),
            Err(JoinTokenError::Malformed)
        );
        let bad_hex = format_join_token(&"zz".repeat(32), "s");
        assert_eq!(parse_join_token(&bad_hex), Err(JoinTokenError::Malformed));
    }
}
