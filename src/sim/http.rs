//! The simulation's one HTTP client: pooled keep-alive connections to the controller, shared by
//! every simulated board, with a deadline per request and line-by-line reading of watches.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::tls::TlsConnector;

/// What can go wrong talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("--server {0:?}: the controller speaks only TLS, https://HOST:PORT")]
    BadServer(String),
    #[error("cannot build the request for {path}")]
    Request {
        path: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("cannot reach the controller for {path}")]
    Unreachable {
        path: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the answer to {path}")]
    Body {
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("no answer to {path} within {0:?}", .timeout)]
    Timeout { path: String, timeout: Duration },
    #[error("the controller answered {status} to {path}: {message}")]
    Status {
        path: String,
        status: StatusCode,
        message: String,
    },
}

/// A client bound to one controller.
#[derive(Clone)]
pub struct Http {
    client: Client<TlsConnector, Full<Bytes>>,
    server: String,
}

impl Http {
    /// A client for `server` (`https://HOST:PORT`) trusting what `tls` trusts (the cluster CA).
    pub fn new(server: &str, tls: Arc<rustls::ClientConfig>) -> Result<Http, HttpError> {
        let server = server.trim_end_matches('/');
        if !server.starts_with("https://") {
            return Err(HttpError::BadServer(server.to_string()));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        // The controller closes connections idle for 30 s; drop ours before it does.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(20))
            .build(TlsConnector::new(connector, tls));
        Ok(Http {
            client,
            server: server.to_string(),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server))
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| HttpError::Request {
                path: path.to_string(),
                source,
            })
    }

    /// Sends one request and reads the whole answer within `timeout`; an error status is an
    /// error carrying the controller's message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, HttpError> {
        let request = self.request(method, path, token, body)?;
        let exchange =
            async {
                let response = self.client.request(request).await.map_err(|source| {
                    HttpError::Unreachable {
                        path: path.to_string(),
                        source,
                    }
                })?;
                let status = response.status();
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|source| HttpError::Body {
                        path: path.to_string(),
                        source,
                    })?
                    .to_bytes();
                if !status.is_success() {
                    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                    return Err(HttpError::Status {
                        path: path.to_string(),
                        status,
                        message,
                    });
                }
                Ok(bytes)
            };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                path: path.to_string(),
                timeout,
            })?
    }

    /// Opens a watch at `path`: its lines come from [`Lines::next`].
    pub async fn watch(&self, path: &str, token: &str) -> Result<Lines, HttpError> {
        let request = self.request(Method::GET, path, token, None)?;
        let opened = async {
            self.client
                .request(request)
                .await
                .map_err(|source| HttpError::Unreachable {
                    path: path.to_string(),
                    source,
                })
        };
        let response = tokio::time::timeout(Duration::from_secs(5), opened)
            .await
            .map_err(|_| HttpError::Timeout {
                path: path.to_string(),
                timeout: Duration::from_secs(5),
            })??;
        let status = response.status();
        if !status.is_success() {
            return Err(HttpError::Status {
                path: path.to_string(),
                status,
                message: "watch refused".into(),
            });
        }
        Ok(Lines {
            body: response.into_body(),
            pending: Vec::new(),
            path: path.to_string(),
        })
    }
}

/// The newline-delimited lines of a watch.
pub struct Lines {
    body: Incoming,
    pending: Vec<u8>,
    path: String,
}

impl Lines {
    /// The next line; `None` when the stream ended. Silence longer than `quiet` is an error
    /// (the controller sends a bookmark every few seconds, so silence is a dead connection).
    pub async fn next(&mut self, quiet: Duration) -> Result<Option<Vec<u8>>, HttpError> {
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=at).collect();
                line.pop();
                return Ok(Some(line));
            }
            let frame = tokio::time::timeout(quiet, self.body.frame())
                .await
                .map_err(|_| HttpError::Timeout {
                    path: self.path.clone(),
                    timeout: quiet,
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(HttpError::Body {
                        path: self.path.clone(),
                        source,
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
