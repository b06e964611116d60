//! A small blocking HTTPS client for the controller's `/v1` API, trusting the cluster CA from
//! the client config.
//!
//! `server` may list several controllers, comma separated: a request that cannot reach one
//! goes to the next, and a follower's "the leader is X" is followed.

// Each attempt is a closure returning ureq's own `Result<Response, ureq::Error>`, which is what
// ureq hands back; boxing it per call would only move the same bytes to the heap.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::ClientConfig;
use texu_agent::daemon::client::Servers;

/// An error answer from the controller.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", details_suffix(details))]
pub struct ApiFailure {
    pub status: u16,
    pub message: String,
    pub details: Vec<String>,
}

fn details_suffix(details: &[String]) -> String {
    details.iter().map(|d| format!("\n  {d}")).collect()
}

/// A client of the controllers, with one token.
pub struct Client {
    agent: ureq::Agent,
    servers: Servers,
    token: String,
    /// The CA trusted; `None`: ureq's public roots (a controller behind a public certificate).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Client {
    /// A client for `config.server` using `config.token`, trusting `config.ca`.
    pub fn new(config: ClientConfig) -> Result<Client> {
        let tls = match &config.ca {
            Some(pem) => Some(texu_controller::tls::client_config(pem).ok_or_else(|| {
                anyhow!("the client config's `ca` is not a PEM certificate the CLI can trust")
            })?),
            None => None,
        };
        let mut client = Client {
            agent: ureq::Agent::new(),
            servers: Servers::new(&config.server),
            token: config.token,
            tls,
        };
        client.agent = client
            .builder()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(60))
            .build();
        Ok(client)
    }

    /// A ureq agent builder with this client's TLS settings.
    fn builder(&self) -> ureq::AgentBuilder {
        let builder = ureq::AgentBuilder::new();
        match &self.tls {
            Some(tls) => builder.tls_config(tls.clone()),
            None => builder,
        }
    }

    /// The base URL of the controller it talks to now.
    pub fn server(&self) -> String {
        self.servers.current()
    }

    /// Sends `request(base URL)` to the current controller; when it cannot be reached (or
    /// answers that another leads) to the next, once per known controller.
    fn send(
        &self,
        request: impl Fn(&str) -> std::result::Result<ureq::Response, ureq::Error>,
    ) -> (String, std::result::Result<ureq::Response, ureq::Error>) {
        let attempts = self.servers.len().max(1) + 1;
        let mut server = self.servers.current();
        let mut result = request(&server);
        for _ in 1..attempts {
            match result {
                Err(ureq::Error::Transport(_)) => self.servers.failed(&server),
                Err(ureq::Error::Status(503, response)) => {
                    let text = response.into_string().unwrap_or_default();
                    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    match body.get("leader").map(|l| l.as_str()) {
                        Some(Some(leader)) if leader != server => self.servers.prefer(leader),
                        Some(_) => self.servers.failed(&server),
                        None => {
                            let again = ureq::Response::new(503, "Service Unavailable", &text);
                            return (server, again.and_then(|r| Err(ureq::Error::Status(503, r))));
                        }
                    }
                }
                other => return (server, other),
            }
            server = self.servers.current();
            result = request(&server);
        }
        (server, result)
    }

    /// GETs a path and decodes the JSON answer.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(self.send(|s| self.request(s, "GET", path).call()))
    }

    /// PUTs a JSON body and decodes the JSON answer.
    pub fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send_json("PUT", path, body)
    }

    /// PUTs a file as the request body (streamed) and decodes the JSON answer.
    pub fn put_file<T: DeserializeOwned>(&self, path: &str, file: &std::path::Path) -> Result<T> {
        let size = std::fs::metadata(file)
            .map_err(|e| anyhow!("cannot open {}: {e}", file.display()))?
            .len();
        let agent = self
            .builder()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(600))
            .build();
        // A file can be streamed once per attempt: open it again for each controller tried.
        let attempts = self.servers.len().max(1);
        let mut attempt = 1;
        loop {
            let server = self.servers.current();
            let f = std::fs::File::open(file)
                .map_err(|e| anyhow!("cannot open {}: {e}", file.display()))?;
            let sent = agent
                .put(&format!("{server}{path}"))
                .set("Authorization", &format!("Bearer {}", self.token))
                .set("Content-Type", "application/octet-stream")
                .set("Content-Length", &size.to_string())
                .send(f);
            if attempt == attempts || !matches!(sent, Err(ureq::Error::Transport(_))) {
                return self.call((server, sent));
            }
            self.servers.failed(&server);
            attempt += 1;
        }
    }

    /// POSTs with an empty body and decodes the JSON answer.
    pub fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(self.send(|s| self.request(s, "POST", path).send_string("")))
    }

    /// POSTs a JSON body and decodes the JSON answer.
    pub fn post_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send_json("POST", path, body)
    }

    /// Sends `body` as JSON with `method` and decodes the JSON answer.
    fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let body = serde_json::to_string(body)?;
        self.call(self.send(|s| {
            self.request(s, method, path)
                .set("Content-Type", "application/json")
                .send_string(&body)
        }))
    }

    /// DELETEs a path and decodes the JSON answer.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(self.send(|s| self.request(s, "DELETE", path).call()))
    }

    /// Opens a watch: GET with `watch=true`; returns a reader of NDJSON lines.
    pub fn watch(&self, path: &str) -> Result<impl std::io::BufRead> {
        let agent = self
            .builder()
            .timeout_connect(Duration::from_secs(5))
            .build();
        let response = self.send(|server| {
            agent
                .get(&format!("{server}{path}"))
                .set("Authorization", &format!("Bearer {}", self.token))
                .call()
        });
        let response = self.check(response)?;
        Ok(std::io::BufReader::new(response.into_reader()))
    }

    fn request(&self, server: &str, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{server}{path}"))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    fn call<T: DeserializeOwned>(
        &self,
        sent: (String, std::result::Result<ureq::Response, ureq::Error>),
    ) -> Result<T> {
        let server = sent.0.clone();
        let response = self.check(sent)?;
        let text = response.into_string()?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow!("the controller at {server} sent an answer that is not the expected JSON: {e}")
        })
    }

    fn check(
        &self,
        (server, result): (String, std::result::Result<ureq::Response, ureq::Error>),
    ) -> Result<ureq::Response> {
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let message = body["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("HTTP {status}: {}", text.trim()));
                let details = body["details"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|d| d.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let message = if status == 401 {
                    format!("{message} (check --token, TEXU_TOKEN or your client config)")
                } else {
                    message
                };
                Err(ApiFailure {
                    status,
                    message,
                    details,
                }
                .into())
            }
            Err(ureq::Error::Transport(t)) => {
                let hint = match t.kind() {
                    ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns => {
                        "; is the controller running? (start it with `texu controller`, or point \
                         --server / TEXU_SERVER at it)"
                    }
                    ureq::ErrorKind::Io if self.tls.is_none() => {
                        "; the client config holds no cluster CA: use the one `texu controller` \
                         wrote, or --ca-file DATA_DIR/ca.pem"
                    }
                    _ => "",
                };
                Err(anyhow!(
                    "cannot reach the controller at {server}: {t}{hint}"
                ))
            }
        }
    }
}

/// True when an error is the controller answering 404.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.downcast_ref::<ApiFailure>()
        .is_some_and(|f| f.status == 404)
}
