//! The agent's client for the controller API: join, heartbeat, list and watch its containers.
//!
//! Blocking HTTP (ureq) run on blocking threads: the agent makes a request every half second at
//! most, and a blocking client keeps the binary and the resident set small. Every connection is
//! TLS trusting only the cluster CA pinned from the join token (trust.rs).
//!
//! With several controllers ([`Servers`]) every request goes to the current one; when it does
//! not answer the client moves to the next, and when a follower answers that another
//! controller leads, it moves there. The list grows with what join and heartbeat answers say.

use std::io::BufRead;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use texu_api::{Container, ContainerStatus, NodeSpec};

/// What can go wrong talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller could not be reached (refused, timeout, DNS).
    #[error("cannot reach the controller at {server}: {message}")]
    Unreachable { server: String, message: String },
    /// The controller answered with an error status.
    #[error("the controller answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The controller's answer did not decode.
    #[error("unexpected answer from the controller: {0}")]
    Decode(String),
}

/// A result of this module.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// One container's status in a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reported {
    pub name: String,
    pub generation: i64,
    pub status: ContainerStatus,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Heartbeat<'a> {
    spec: &'a NodeSpec,
    labels: &'a std::collections::BTreeMap<String, String>,
    containers: &'a [Reported],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    prompt: bool,
}

#[derive(Deserialize)]
struct ContainerList {
    revision: i64,
    items: Vec<Container>,
}

/// A change to one of this node's containers.
#[derive(Debug, Clone, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub revision: i64,
    #[serde(default)]
    pub object: serde_json::Value,
    #[serde(default)]
    pub error: Option<String>,
}

/// How long one heartbeat may take before it counts as failed.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

use super::servers::named_controllers;
pub use super::servers::Servers;

/// A client of the controllers.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    servers: std::sync::Arc<Servers>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Client {
    /// A client for `server` (`https://HOST:PORT`, or several comma separated) with ureq's
    /// default trust (tests with no controller).
    pub fn new(server: &str) -> Client {
        Self::with_tls(server, None)
    }

    /// A client for `server` trusting what `tls` trusts (the pinned cluster CA).
    pub fn pinned(server: &str, tls: std::sync::Arc<rustls::ClientConfig>) -> Client {
        Self::with_tls(server, Some(tls))
    }

    fn with_tls(server: &str, tls: Option<std::sync::Arc<rustls::ClientConfig>>) -> Client {
        let mut client = Client {
            agent: ureq::Agent::new(),
            servers: std::sync::Arc::new(Servers::new(server)),
            tls,
        };
        client.agent = client
            .builder()
            .timeout_connect(Duration::from_secs(3))
            .timeout_read(Duration::from_secs(10))
            .build();
        client
    }

    /// A ureq agent builder with this client's TLS settings.
    fn builder(&self) -> ureq::AgentBuilder {
        let builder = ureq::AgentBuilder::new();
        match &self.tls {
            Some(tls) => builder.tls_config(tls.clone()),
            None => builder,
        }
    }

    /// The controllers this client knows.
    pub fn servers(&self) -> &Servers {
        &self.servers
    }

    /// Joins the cluster with the join token; returns the node's own credential and the
    /// cluster's container range, when the controller says it.
    pub fn join(
        &self,
        join_token: &str,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
        spec: &NodeSpec,
    ) -> Result<(String, Option<String>)> {
        let body = serde_json::json!({ "name": name, "labels": labels, "spec": spec });
        let v: serde_json::Value = self.send("POST", "/v1/join", join_token, Some(body))?;
        self.servers.learn(&named_controllers(&v));
        let credential = v["credential"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Decode("join answer has no credential".into()))?;
        Ok((credential, v["clusterCidr"].as_str().map(str::to_string)))
    }

    /// Sends a heartbeat with the status of every container.
    pub fn heartbeat(
        &self,
        credential: &str,
        name: &str,
        spec: &NodeSpec,
        labels: &std::collections::BTreeMap<String, String>,
        containers: &[Reported],
        prompt: bool,
    ) -> Result<()> {
        let body = serde_json::to_value(Heartbeat {
            spec,
            labels,
            containers,
            prompt,
        })
        .map_err(|e| ClientError::Decode(e.to_string()))?;
        let v: serde_json::Value = self.send_within(
            "PUT",
            &format!("/v1/nodes/{name}/status"),
            credential,
            Some(body),
            Some(HEARTBEAT_TIMEOUT),
        )?;
        self.servers.learn(&named_controllers(&v));
        Ok(())
    }

    /// Reads this node's own object.
    pub fn node(&self, credential: &str, name: &str) -> Result<texu_api::Node> {
        self.send("GET", &format!("/v1/nodes/{name}"), credential, None)
    }

    /// Lists every node (boards route to each other's subnets).
    pub fn nodes(&self, credential: &str) -> Result<Vec<texu_api::Node>> {
        #[derive(Deserialize)]
        struct NodeList {
            items: Vec<texu_api::Node>,
        }
        let list: NodeList = self.send("GET", "/v1/nodes", credential, None)?;
        Ok(list
            .items
            .into_iter()
            .filter(|n| match texu_api::validate_name(&n.metadata.name) {
                Ok(()) => true,
                Err(why) => {
                    tracing::error!(node = ?n.metadata.name, %why, "refusing a node with an invalid name from the controller");
                    false
                }
            })
            .collect())
    }

    /// Lists this node's containers and the revision of the read.
    pub fn containers(&self, credential: &str, node: &str) -> Result<(Vec<Container>, i64)> {
        let list: ContainerList = self.send(
            "GET",
            &format!("/v1/containers?node={node}"),
            credential,
            None,
        )?;
        let items = list.items.into_iter().filter(acceptable).collect();
        Ok((items, list.revision))
    }

    /// Follows changes to this node's containers after `revision`, calling `on_event` for each
    /// until the stream ends or `on_event` returns false.
    pub fn watch(
        &self,
        credential: &str,
        node: &str,
        revision: i64,
        on_event: impl FnMut(WatchEvent) -> bool,
    ) -> Result<()> {
        let path = format!("/v1/containers?node={node}&watch=true&revision={revision}");
        self.follow(credential, &path, event_acceptable, on_event)
    }

    /// Every role's Ready endpoints and the revision of the read.
    pub fn endpoints(
        &self,
        credential: &str,
    ) -> Result<(
        std::collections::BTreeMap<String, texu_api::RoleEndpoints>,
        i64,
    )> {
        #[derive(Deserialize)]
        struct List {
            items: Vec<texu_api::RoleEndpoints>,
            revision: i64,
        }
        let list: List = self.send("GET", "/v1/endpoints", credential, None)?;
        let items = list
            .items
            .into_iter()
            .map(|e| (e.role.clone(), e))
            .collect();
        Ok((items, list.revision))
    }

    /// Follows endpoint changes after `revision` (see [`Client::watch`]).
    pub fn watch_endpoints(
        &self,
        credential: &str,
        revision: i64,
        on_event: impl FnMut(WatchEvent) -> bool,
    ) -> Result<()> {
        let path = format!("/v1/endpoints?watch=true&revision={revision}");
        self.follow(credential, &path, endpoints_event_acceptable, on_event)
    }

    /// Reads the NDJSON lines of a watch at `path`, passing on those `acceptable` lets through.
    fn follow(
        &self,
        credential: &str,
        path: &str,
        acceptable: fn(&WatchEvent) -> bool,
        mut on_event: impl FnMut(WatchEvent) -> bool,
    ) -> Result<()> {
        let server = self.servers.current();
        let url = format!("{server}{path}");
        // The controller sends a BOOKMARK line every few seconds on a quiet watch: silence much
        // longer than that is a dead connection (a partition leaves TCP silent), not quiet.
        let agent = self
            .builder()
            .timeout_connect(Duration::from_secs(3))
            .timeout_read(Duration::from_secs(5))
            .build();
        let response = agent
            .get(&url)
            .set("Authorization", &format!("Bearer {credential}"))
            .call()
            .map_err(|e| self.error(&server, e))?;
        let reader = std::io::BufReader::new(response.into_reader());
        for line in reader.lines() {
            let line = line.map_err(|e| {
                self.servers.failed(&server);
                ClientError::Unreachable {
                    server: server.clone(),
                    message: e.to_string(),
                }
            })?;
            let event: WatchEvent =
                serde_json::from_str(&line).map_err(|e| ClientError::Decode(e.to_string()))?;
            if !acceptable(&event) {
                continue;
            }
            if !on_event(event) {
                break;
            }
        }
        Ok(())
    }

    /// Downloads blob `sha256:HEX` into `dest`, hashing as it goes; returns the hex sha256 of
    /// what arrived (the caller compares it with what it asked for).
    pub fn download(&self, credential: &str, hex: &str, dest: &std::path::Path) -> Result<String> {
        use sha2::Digest;
        use std::io::{Read, Write};
        let agent = self
            .builder()
            .timeout_connect(Duration::from_secs(3))
            .timeout_read(Duration::from_secs(60))
            .build();
        let server = self.servers.current();
        let response = agent
            .get(&format!("{server}/v1/blobs/sha256/{hex}"))
            .set("Authorization", &format!("Bearer {credential}"))
            .call()
            .map_err(|e| self.error(&server, e))?;
        let io = |e: std::io::Error| ClientError::Unreachable {
            server: server.clone(),
            message: format!("downloading sha256:{hex}: {e}"),
        };
        let mut reader = response.into_reader();
        let mut file = std::fs::File::create(dest).map_err(io)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = reader.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io)?;
        }
        file.sync_all().map_err(io)?;
        Ok(hex_string(&hasher.finalize()))
    }

    fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        self.send_within(method, path, token, body, None)
    }

    /// `send`, giving up after `timeout` in all (a heartbeat into a partition must fail, not
    /// hang until TCP gives up). A controller that does not answer is skipped for the next
    /// one, and a follower's "the leader is X" sends the request to X, each once per known
    /// controller.
    fn send_within<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let attempts = self.servers.len().max(1) + 1;
        let mut last = None;
        for _ in 0..attempts {
            let server = self.servers.current();
            match self.send_once(&server, method, path, token, body.as_ref(), timeout) {
                Ok(text) => {
                    return serde_json::from_str(&text)
                        .map_err(|e| ClientError::Decode(e.to_string()))
                }
                Err(Failure::Moved { leader, error }) => {
                    match leader {
                        Some(leader) if leader != server => self.servers.prefer(&leader),
                        // No leader yet, or a confused one: try another controller.
                        _ => self.servers.failed(&server),
                    }
                    last = Some(error);
                }
                Err(Failure::Other(error)) => {
                    if !matches!(error, ClientError::Unreachable { .. }) {
                        return Err(error);
                    }
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unreachable {
            server: String::new(),
            message: "no controller address is known".into(),
        }))
    }

    fn send_once(
        &self,
        server: &str,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
        timeout: Option<Duration>,
    ) -> Result<String, Failure> {
        let mut req = self
            .agent
            .request(method, &format!("{server}{path}"))
            .set("Authorization", &format!("Bearer {token}"));
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let result = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(503, response)) => {
                let text = response.into_string().unwrap_or_default();
                let v = serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default();
                let message = v["error"].as_str().unwrap_or(&text).to_string();
                let error = ClientError::Status {
                    status: 503,
                    message,
                };
                if v.get("leader").is_none() {
                    return Err(Failure::Other(error));
                }
                let leader = v["leader"]
                    .as_str()
                    .filter(|l| l.starts_with("http://") || l.starts_with("https://"))
                    .map(str::to_string);
                return Err(Failure::Moved { leader, error });
            }
            Err(e) => return Err(Failure::Other(self.error(server, e))),
        };
        response
            .into_string()
            .map_err(|e| Failure::Other(ClientError::Decode(e.to_string())))
    }

    fn error(&self, server: &str, e: ureq::Error) -> ClientError {
        match e {
            ureq::Error::Status(status, response) => {
                let text = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                ClientError::Status { status, message }
            }
            ureq::Error::Transport(t) => {
                self.servers.failed(server);
                ClientError::Unreachable {
                    server: server.to_string(),
                    message: t.to_string(),
                }
            }
        }
    }
}

/// Why one attempt failed.
enum Failure {
    /// A follower answered: the leader is elsewhere (or not elected yet).
    Moved {
        leader: Option<String>,
        error: ClientError,
    },
    Other(ClientError),
}

/// True when every name in `c` is a valid object name; logs and refuses it otherwise. Names
/// from the wire become paths on the board (rootfs, records, volumes), so `../x` must never
/// get that far.
fn acceptable(c: &Container) -> bool {
    match texu_api::validate_container_names(c) {
        Ok(()) => true,
        Err(why) => {
            tracing::error!(container = ?c.metadata.name, %why, "refusing a container with an invalid name from the controller");
            false
        }
    }
}

/// `acceptable` for a watch event: the name of a deleted object, every name of a changed one.
fn event_acceptable(event: &WatchEvent) -> bool {
    if matches!(event.kind.as_str(), "BOOKMARK" | "ERROR") {
        return true;
    }
    let name = event.object["metadata"]["name"]
        .as_str()
        .unwrap_or_default();
    if let Err(why) = texu_api::validate_name(name) {
        tracing::error!(container = ?name, %why, kind = %event.kind, "refusing a watch event with an invalid container name");
        return false;
    }
    match serde_json::from_value::<Container>(event.object.clone()) {
        Ok(c) => acceptable(&c),
        // The watcher reports what does not decode; the name alone was checked.
        Err(_) => true,
    }
}

/// An endpoints change names a valid role (its object is a role's endpoints, not a container).
fn endpoints_event_acceptable(event: &WatchEvent) -> bool {
    if matches!(event.kind.as_str(), "BOOKMARK" | "ERROR") {
        return true;
    }
    let role = event.object["role"].as_str().unwrap_or_default();
    if let Err(why) = texu_api::validate_name(role) {
        tracing::error!(role = ?role, %why, kind = %event.kind, "refusing an endpoints change with an invalid role name");
        return false;
    }
    true
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(object: serde_json::Value) -> WatchEvent {
        WatchEvent {
            kind: "MODIFIED".into(),
            revision: 7,
            object,
            error: None,
        }
    }

    #[test]
    fn endpoints_changes_are_checked_by_role_not_as_containers() {
        let change = event(serde_json::json!({"role": "web", "ports": {"http": []}}));
        assert!(endpoints_event_acceptable(&change));
        assert!(!event_acceptable(&change), "not a container");
        assert!(!endpoints_event_acceptable(&event(
            serde_json::json!({"role": "../x"})
        )));
    }
}
