//! The CLI's client config: which controller to talk to and with which token.
//!
//! Precedence: `--server`/`--token` flags, then `TEXU_SERVER`/`TEXU_TOKEN`, then the config file
//! (`--config`, `TEXU_CONFIG`, or `~/.config/texu/config.yaml`) that `texu controller` writes for
//! the local user. The config also holds the cluster CA (PEM) the CLI trusts, and nothing else:
//! `--ca-file`/`TEXU_CA_FILE` names a PEM file to trust instead.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The address `texu controller` listens on by default and the CLI tries when nothing is set.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7080";

/// The on-disk client config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub server: String,
    pub token: String,
    /// The cluster CA certificate(s) in PEM, the only ones trusted for the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// The default config path: `$XDG_CONFIG_HOME/texu/config.yaml` or `~/.config/texu/config.yaml`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("texu/config.yaml"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".config/texu/config.yaml"))
}

/// Reads a config file; `Ok(None)` when it does not exist.
pub fn read(path: &Path) -> Result<Option<ClientConfig>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let config = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("{}: not a valid texu client config", path.display()))?;
            Ok(Some(config))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a config file readable only by its owner.
pub fn write(path: &Path, config: &ClientConfig) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_yaml_ng::to_string(config)?;
    texu_controller::auth::write_secret_file(path, &text)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The CA to trust without a token (`texu sim` joins boards with the join token): the
/// `--ca-file`'s text, else the config file's `ca`.
pub fn ca(config_path: Option<PathBuf>, ca_file: Option<PathBuf>) -> Result<Option<String>> {
    if let Some(path) = ca_file {
        return std::fs::read_to_string(&path)
            .map(Some)
            .with_context(|| format!("cannot read the CA file {}", path.display()));
    }
    let file = match config_path.or_else(default_path) {
        Some(path) => read(&path)?,
        None => None,
    };
    Ok(file.and_then(|c| c.ca))
}

/// Resolves the server, token and CA from flags/env (already merged by clap) and the config file.
pub fn resolve(
    server: Option<String>,
    token: Option<String>,
    config_path: Option<PathBuf>,
    ca_file: Option<PathBuf>,
) -> Result<ClientConfig> {
    let file = match config_path.clone().or_else(default_path) {
        Some(path) => read(&path)?,
        None => None,
    };
    let server = server
        .or_else(|| file.as_ref().map(|c| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let ca = match ca_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?,
        ),
        None => file.as_ref().and_then(|c| c.ca.clone()),
    };
    let Some(token) = token.or_else(|| file.map(|c| c.token)) else {
        let where_ = config_path
            .or_else(default_path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.config/texu/config.yaml".into());
        bail!(
            "no token: pass --token, set TEXU_TOKEN, or run `texu controller` on this machine, \
             which writes {where_} (the admin token is in the controller's DATA_DIR/admin.token)"
        );
    };
    let server = server.trim_end_matches('/').to_string();
    if let Some(rest) = server.strip_prefix("http://") {
        bail!("server {server:?}: the controller speaks only TLS; use https://{rest}");
    }
    if !server.starts_with("https://") {
        bail!("server {server:?} must start with https://");
    }
    Ok(ClientConfig { server, token, ca })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_fills_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/config.yaml");
        write(
            &path,
            &ClientConfig {
                server: "https://127.0.0.1:9".into(),
                token: "file-token".into(),
                ca: Some("file-ca".into()),
            },
        )
        .unwrap();
        let c = resolve(None, None, Some(path.clone()), None).unwrap();
        assert_eq!(
            (c.server.as_str(), c.token.as_str(), c.ca.as_deref()),
            ("https://127.0.0.1:9", "file-token", Some("file-ca"))
        );
        let ca = dir.path().join("other-ca.pem");
        std::fs::write(&ca, "flag-ca").unwrap();
        let c = resolve(
            Some("https://h:1/".into()),
            Some("t".into()),
            Some(path.clone()),
            Some(ca),
        )
        .unwrap();
        assert_eq!(
            (c.server.as_str(), c.token.as_str(), c.ca.as_deref()),
            ("https://h:1", "t", Some("flag-ca"))
        );
        let err = resolve(Some("http://h:1".into()), None, Some(path), None).unwrap_err();
        assert!(err.to_string().contains("https://h:1"), "{err}");
    }

    #[test]
    fn missing_token_says_where_to_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(None, None, Some(dir.path().join("none.yaml")), None).unwrap_err();
        assert!(err.to_string().contains("admin.token"), "{err}");
    }
}
