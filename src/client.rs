//! A small blocking HTTP client for the controller's `/v1` API.

use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::ClientConfig;

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

/// A client bound to one controller and token.
pub struct Client {
    agent: ureq::Agent,
    server: String,
    token: String,
}

impl Client {
    /// A client for `config.server` using `config.token`.
    pub fn new(config: ClientConfig) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(60))
            .build();
        Client {
            agent,
            server: config.server,
            token: config.token,
        }
    }

    /// The controller's base URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// GETs a path and decodes the JSON answer.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(self.request("GET", path).call())
    }

    /// PUTs a JSON body and decodes the JSON answer.
    pub fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let body = serde_json::to_string(body)?;
        self.call(
            self.request("PUT", path)
                .set("Content-Type", "application/json")
                .send_string(&body),
        )
    }

    /// PUTs a file as the request body (streamed) and decodes the JSON answer.
    pub fn put_file<T: DeserializeOwned>(&self, path: &str, file: &std::path::Path) -> Result<T> {
        let f = std::fs::File::open(file)
            .map_err(|e| anyhow!("cannot open {}: {e}", file.display()))?;
        let size = f.metadata()?.len();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(600))
            .build();
        let response = agent
            .put(&format!("{}{path}", self.server))
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &size.to_string())
            .send(f);
        self.call(response)
    }

    /// POSTs with an empty body and decodes the JSON answer.
    pub fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(self.request("POST", path).send_string(""))
    }

    /// POSTs a JSON body and decodes the JSON answer.
    pub fn post_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let body = serde_json::to_string(body)?;
        self.call(
            self.request("POST", path)
                .set("Content-Type", "application/json")
                .send_string(&body),
        )
    }

    /// DELETEs a path and decodes the JSON answer.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(self.request("DELETE", path).call())
    }

    /// Opens a watch: GET with `watch=true`; returns a reader of NDJSON lines.
    pub fn watch(&self, path: &str) -> Result<impl std::io::BufRead> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .build();
        let url = format!("{}{path}", self.server);
        let response = agent
            .get(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .call();
        let response = self.check(response)?;
        Ok(std::io::BufReader::new(response.into_reader()))
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.server))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    fn call<T: DeserializeOwned>(
        &self,
        result: std::result::Result<ureq::Response, ureq::Error>,
    ) -> Result<T> {
        let response = self.check(result)?;
        let text = response.into_string()?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "the controller at {} sent an answer that is not the expected JSON: {e}",
                self.server
            )
        })
    }

    fn check(
        &self,
        result: std::result::Result<ureq::Response, ureq::Error>,
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
                    _ => "",
                };
                Err(anyhow!(
                    "cannot reach the controller at {}: {t}{hint}",
                    self.server
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
