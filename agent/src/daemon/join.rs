//! How a board joins the cluster: the join token, held (and wiped when dropped) only until the
//! node has its own credential; the join itself, retried with backoff; and the credential and
//! the cluster's container range stored in the data dir, readable by the agent alone.

use std::sync::Arc;
use std::time::Duration;

use super::client::{Client, ClientError};
use super::{node_spec, AgentError, Config};

/// File holding the node's credential inside the data dir (mode 0600).
pub const CREDENTIAL_FILE: &str = "node.credential";
/// File holding the cluster's container range, as the join answer gave it: routes go only to
/// subnets inside it.
pub const CLUSTER_CIDR_FILE: &str = "cluster.cidr";

/// The cluster join token, shared by every copy of the agent's config so that forgetting it
/// once forgets it everywhere. Its bytes are overwritten when dropped.
#[derive(Clone)]
pub struct JoinToken(Arc<std::sync::Mutex<Option<Secret>>>);

impl JoinToken {
    /// Holds `token`.
    pub fn new(token: String) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(Secret(token)))))
    }

    /// The token, unless forgotten.
    pub(super) fn get(&self) -> Option<Secret> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops the token (and wipes it): the node holds its own credential now.
    pub fn forget(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether the token is still held.
    pub fn is_held(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_held() {
            "JoinToken(held)"
        } else {
            "JoinToken(forgotten)"
        })
    }
}

/// A string whose bytes are zeroed when it is dropped.
#[derive(Clone)]
pub(super) struct Secret(pub(super) String);

impl Drop for Secret {
    fn drop(&mut self) {
        let s = std::mem::take(&mut self.0);
        let mut bytes = s.into_bytes();
        for b in bytes.iter_mut() {
            // SAFETY: a valid, exclusive pointer into the vector; volatile so the zeroing of a
            // buffer about to be freed is not optimized away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Reads the stored credential, or joins with the join token and stores the new one.
pub async fn credential(config: &Config, client: &Client) -> Result<String, AgentError> {
    let path = config.data_dir.join(CREDENTIAL_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let c = text.trim().to_string();
        if !c.is_empty() {
            if let Some(t) = &config.join_token {
                t.forget();
            }
            return Ok(c);
        }
    }
    let token = config
        .join_token
        .as_ref()
        .and_then(JoinToken::get)
        .ok_or(AgentError::NoJoinToken)?;
    let spec = node_spec(config);
    let mut backoff = Duration::from_millis(200);
    loop {
        let (client, name, labels, spec, token) = (
            client.clone(),
            config.name.clone(),
            config.labels.clone(),
            spec.clone(),
            token.clone(),
        );
        let result =
            tokio::task::spawn_blocking(move || client.join(&token.0, &name, &labels, &spec))
                .await
                .unwrap_or_else(|e| Err(ClientError::Decode(format!("join task failed: {e}"))));
        match result {
            Ok((credential, cluster_cidr)) => {
                if let Some(cidr) = cluster_cidr {
                    let cidr_path = config.data_dir.join(CLUSTER_CIDR_FILE);
                    write_private(&cidr_path, &cidr).map_err(|source| AgentError::DataDir {
                        path: cidr_path,
                        source,
                    })?;
                }
                write_private(&path, &credential).map_err(|source| AgentError::DataDir {
                    path: path.clone(),
                    source,
                })?;
                tracing::info!(node = %config.name, "joined the cluster");
                if let Some(t) = &config.join_token {
                    t.forget();
                }
                return Ok(credential);
            }
            // Refused outright: retrying will not help.
            Err(
                e @ ClientError::Status {
                    status: 400..=499, ..
                },
            ) => return Err(AgentError::Join(e)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot join yet; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}
