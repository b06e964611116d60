//! The cluster join token as the controller holds it: `K10<CA hash>::<secret>` in
//! `DATA_DIR/join.token`, rotatable while the controller runs (boards that joined keep their own
//! credentials; only new joins need the new token).

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use crate::auth::{AuthError, Token};

/// The join token in force, and where it is kept.
pub struct JoinToken {
    current: RwLock<Token>,
    path: Option<PathBuf>,
    ca_hash: String,
}

impl JoinToken {
    /// Reads `dir/join.token`, or makes one. A token from before TLS (`texu-join-...`) or one
    /// naming another CA keeps its secret and gets the current CA's hash.
    pub fn load_or_create(dir: &Path, ca_hash: &str) -> Result<JoinToken, AuthError> {
        let (stored, created) =
            crate::auth::load_or_create(dir, crate::auth::JOIN_TOKEN_FILE, "texu-join-")?;
        let path = dir.join(crate::auth::JOIN_TOKEN_FILE);
        let secret = match texu_api::parse_join_token(stored.secret()) {
            Ok(parts) => parts.secret,
            Err(_) => stored.secret().to_string(),
        };
        let token = Token::from_secret(texu_api::format_join_token(ca_hash, &secret));
        if token != stored {
            if !created {
                tracing::info!(path = %path.display(), "the join token now carries the CA's hash");
            }
            write(&path, &token)?;
        }
        Ok(JoinToken {
            current: RwLock::new(token),
            path: Some(path),
            ca_hash: ca_hash.to_string(),
        })
    }

    /// A token held in memory only (unit tests).
    pub fn fixed(token: &str) -> JoinToken {
        JoinToken {
            current: RwLock::new(Token::from_secret(token)),
            path: None,
            ca_hash: String::new(),
        }
    }

    /// True when `presented` is the join token in force.
    pub fn matches(&self, presented: &str) -> bool {
        self.current().matches(presented)
    }

    /// The join token in force.
    pub fn current(&self) -> Token {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the token with a fresh one (written to the data dir first); the old one stops
    /// working at once.
    pub fn rotate(&self) -> Result<Token, AuthError> {
        let secret = Token::generate("texu-join-");
        let token = Token::from_secret(texu_api::format_join_token(&self.ca_hash, secret.secret()));
        if let Some(path) = &self.path {
            write(path, &token)?;
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = token.clone();
        Ok(token)
    }
}

fn write(path: &Path, token: &Token) -> Result<(), AuthError> {
    crate::auth::write_secret_file(path, &format!("{}\n", token.secret())).map_err(|source| {
        AuthError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_token_keeps_its_secret_and_gains_the_hash_and_rotation_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(crate::auth::JOIN_TOKEN_FILE);
        std::fs::write(&file, "texu-join-0123\n").unwrap();
        let hash = "cd".repeat(32);
        let token = JoinToken::load_or_create(dir.path(), &hash).unwrap();
        let expected = format!("K10{hash}::texu-join-0123");
        assert!(token.matches(&expected));
        assert!(!token.matches("texu-join-0123"), "the bare old secret");
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), expected);
        let rotated = token.rotate().unwrap();
        assert!(token.matches(rotated.secret()));
        assert!(!token.matches(&expected), "the old token stops working");
        let parts = texu_api::parse_join_token(rotated.secret()).unwrap();
        assert_eq!(hex::encode(parts.ca_hash), hash);
        let reloaded = JoinToken::load_or_create(dir.path(), &hash).unwrap();
        assert!(reloaded.matches(rotated.secret()), "kept across a restart");
    }
}
