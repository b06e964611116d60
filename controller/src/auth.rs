//! Credentials: the admin token and the cluster join token, kept as files in the data dir.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// File name of the admin token inside the controller's data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// File name of the cluster join token inside the controller's data dir.
pub const JOIN_TOKEN_FILE: &str = "join.token";

/// What can go wrong reading or writing a credential file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write token file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} is empty or malformed")]
    Malformed { path: PathBuf },
}

/// A bearer secret. Compared in constant time; never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A fresh random token: 32 bytes from the OS generator, hex encoded.
    pub fn generate(prefix: &str) -> Token {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Token(format!("{prefix}{}", hex::encode(bytes)))
    }

    /// Wraps an existing secret.
    pub fn from_secret(secret: impl Into<String>) -> Token {
        Token(secret.into())
    }

    /// The secret, for writing to a file or a header.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// True when `presented` equals this token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let a = self.0.as_bytes();
        let b = presented.as_bytes();
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Reads the token in `dir/file`, or creates it (mode 0600) when absent.
/// Returns the token and whether it was created now.
pub fn load_or_create(dir: &Path, file: &str, prefix: &str) -> Result<(Token, bool), AuthError> {
    let path = dir.join(file);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim();
            if secret.is_empty() || secret.chars().any(char::is_whitespace) {
                return Err(AuthError::Malformed { path });
            }
            Ok((Token(secret.to_string()), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = Token::generate(prefix);
            write_secret_file(&path, &format!("{}\n", token.secret()))
                .map_err(|source| AuthError::Write { path, source })?;
            Ok((token, true))
        }
        Err(source) => Err(AuthError::Read { path, source }),
    }
}

/// Writes `contents` to `path` readable only by its owner (0600), atomically via a temp file.
pub fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode above only applies to new files.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, created1) = load_or_create(dir.path(), ADMIN_TOKEN_FILE, "texu-admin-").unwrap();
        let (t2, created2) = load_or_create(dir.path(), ADMIN_TOKEN_FILE, "texu-admin-").unwrap();
        assert!(created1 && !created2);
        assert_eq!(t1, t2);
        let mode = fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(t1.secret().starts_with("texu-admin-"));
    }

    #[test]
    fn matches_only_the_exact_secret() {
        let t = Token::from_secret("abc123");
        assert!(t.matches("abc123"));
        assert!(!t.matches("abc124"));
        assert!(!t.matches("abc12"));
        assert!(!t.matches(""));
    }

    #[test]
    fn malformed_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(ADMIN_TOKEN_FILE), "  \n").unwrap();
        let err = load_or_create(dir.path(), ADMIN_TOKEN_FILE, "x").unwrap_err();
        assert!(matches!(err, AuthError::Malformed { .. }));
    }
}
