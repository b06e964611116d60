//! The controller's HTTP/JSON API under `/v1`, plus `/healthz` and `/metrics`.
//!
//! One warp filter hands every request to [`handle`], which authenticates, routes by path
//! segments and answers JSON. Routing by hand keeps every `/v1` route behind one authentication
//! check and gives one place that turns errors into `{ "error": ..., "details": ... }`.

mod admin;
mod endpoints;
mod error;
mod events;
mod images;
pub mod leader;
mod nodes;
mod objects;
mod token;
mod watch;
pub use watch::WatchLimit;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Buf;
use futures::{Stream, StreamExt};
use serde::Serialize;
use texu_api::{Container, Kind, Role};
use tokio::sync::watch as signal;
use warp::http::{header, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

pub use error::ApiError;

use crate::auth::Token;
use crate::images::ImageStore;
use crate::metrics::Metrics;
use crate::nodes::Nodes;
use crate::objects::Objects;
use admin::{cordon, remove_node, replace, Cordon};
use images::{blob, import_image, list_images};
use nodes::{heartbeat, join, label_node, list_nodes, read_node};
use objects::{delete, get, list, put_role, read_one, List};

/// Request bodies above this size are refused with 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A request body (at most [`MAX_BODY_BYTES`]) must have arrived this long after its head, or
/// the request is answered 408: a client trickling a body a byte at a time holds a connection
/// (and, before authentication, a join) only this long. The server's header-read timeout
/// covers the head; this covers the body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Every `/v1` route as (method, pattern); `{name}` stands for an object name.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/roles"),
    ("POST", "/v1/token/rotate"),
    ("GET", "/v1/roles/{name}"),
    ("PUT", "/v1/roles/{name}"),
    ("DELETE", "/v1/roles/{name}"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/nodes/{name}"),
    ("DELETE", "/v1/nodes/{name}"),
    ("POST", "/v1/nodes/{name}/cordon"),
    ("POST", "/v1/nodes/{name}/uncordon"),
    ("POST", "/v1/nodes/{name}/drain"),
    ("POST", "/v1/nodes/{name}/labels"),
    ("POST", "/v1/containers/{name}/replace"),
    ("GET", "/v1/containers"),
    ("GET", "/v1/containers/{name}"),
    ("PUT", "/v1/nodes/{name}/status"),
    ("GET", "/v1/images"),
    ("PUT", "/v1/images/{name}/{tag}/{arch}"),
    ("GET", "/v1/blobs/sha256/{digest}"),
    ("GET", "/v1/events"),
    ("POST", "/v1/join"),
    ("GET", "/v1/endpoints"),
    ("GET", "/v1/endpoints/{role}"),
    ("GET", "/v1/leader"),
];

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An operator with the admin token: everything.
    Admin,
    /// A board's agent: its own node and containers only.
    Node(String),
}

/// What every request handler shares.
pub struct ApiState {
    pub objects: Objects,
    pub admin_token: Token,
    /// The cluster join token agents present once to get their own credential.
    pub join_token: crate::join_token::JoinToken,
    pub nodes: Arc<Nodes>,
    pub images: ImageStore,
    pub metrics: Arc<Metrics>,
    /// Flips to true when the controller shuts down; open watches end then.
    pub shutdown: signal::Receiver<bool>,
    /// Open watches per credential.
    pub watches: WatchLimit,
}

/// The warp filter serving the whole API.
pub fn routes(
    state: Arc<ApiState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::addr::remote())
        // The address as the controller's own accept loop records it (connections.rs).
        .and(warp::ext::optional::<crate::connections::PeerAddr>())
        .and(warp::body::stream())
        .then(
            move |method,
                  path: warp::path::FullPath,
                  query: String,
                  headers,
                  remote: Option<std::net::SocketAddr>,
                  peer: Option<crate::connections::PeerAddr>,
                  body| {
                let state = state.clone();
                async move {
                    let request = Request {
                        method,
                        path: path.as_str().to_string(),
                        query: parse_query(&query),
                        headers,
                        remote: remote.or(peer.map(|p| p.0)).map(|a| a.ip()),
                    };
                    handle(state, request, Box::pin(body)).await
                }
            },
        )
}

/// The parts of a request the handlers look at.
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: warp::http::HeaderMap,
    /// The client's address, when the server knows it (repeated bad joins are slowed down
    /// per address).
    pub remote: Option<std::net::IpAddr>,
}

/// Answers one request and records it in the metrics.
pub async fn handle<S, B>(state: Arc<ApiState>, req: Request, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    let started = Instant::now();
    let (route, result) = dispatch(&state, &req, body).await;
    let response = result.unwrap_or_else(|e| e.into_response());
    let status = response.status().as_u16();
    if status >= 500 {
        tracing::warn!(method = %req.method, path = %req.path, status, "request failed");
    } else {
        tracing::debug!(method = %req.method, path = %req.path, status, "request");
    }
    state.metrics.observe_request(
        route,
        req.method.as_str(),
        status,
        started.elapsed().as_secs_f64(),
    );
    response
}

type Answer = Result<Response, ApiError>;

async fn dispatch<S, B>(state: &ApiState, req: &Request, body: S) -> (&'static str, Answer)
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    let segments: Vec<&str> = req
        .path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    match segments.as_slice() {
        ["healthz"] => ("/healthz", only(req, &[Method::GET]).map(|_| text("ok\n"))),
        ["metrics"] => ("/metrics", metrics(state, req).await),
        ["ui", rest @ ..] => ("/ui", crate::ui::serve(req, rest)),
        ["v1", "join"] => ("/v1/join", join(state, req, body).await),
        ["v1", rest @ ..] => match authenticate(state, req).await {
            Err(e) => ("/v1", Err(e)),
            Ok(Principal::Admin) => v1(state, req, rest, body).await,
            Ok(Principal::Node(node)) => node_v1(state, req, &node, rest, body).await,
        },
        _ => (
            "other",
            Err(ApiError::not_found(format!("no route {}", req.path))),
        ),
    }
}

async fn v1<S, B>(state: &ApiState, req: &Request, rest: &[&str], body: S) -> (&'static str, Answer)
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    match rest {
        ["roles"] => ("/v1/roles", list::<Role>(state, req).await),
        ["roles", name] => {
            let route = "/v1/roles/{name}";
            let answer = match req.method {
                Method::GET => get::<Role>(state, name).await,
                Method::PUT => put_role(state, req, name, body).await,
                Method::DELETE => delete(state, Kind::Role, name).await,
                _ => Err(ApiError::method_not_allowed("GET, PUT, DELETE")),
            };
            (route, answer)
        }
        ["nodes"] => ("/v1/nodes", list_nodes(state, req).await),
        ["nodes", name] => {
            let answer = match req.method {
                Method::DELETE => remove_node(state, name).await,
                _ => read_node(state, req, name).await,
            };
            ("/v1/nodes/{name}", answer)
        }
        ["containers"] => ("/v1/containers", list::<Container>(state, req).await),
        ["containers", name] => (
            "/v1/containers/{name}",
            read_one::<Container>(state, req, name).await,
        ),
        ["nodes", name, "status"] => (
            "/v1/nodes/{name}/status",
            heartbeat(state, req, name, body).await,
        ),
        ["nodes", name, "labels"] => (
            "/v1/nodes/{name}/labels",
            label_node(state, req, name, body).await,
        ),
        ["nodes", name, verb @ ("cordon" | "uncordon" | "drain")] => {
            let (route, mode) = match *verb {
                "cordon" => ("/v1/nodes/{name}/cordon", Cordon::Only),
                "drain" => ("/v1/nodes/{name}/drain", Cordon::Drain),
                _ => ("/v1/nodes/{name}/uncordon", Cordon::Uncordon),
            };
            (route, cordon(state, req, name, mode).await)
        }
        ["containers", name, "replace"] => (
            "/v1/containers/{name}/replace",
            replace(state, req, name).await,
        ),
        ["token", "rotate"] => ("/v1/token/rotate", token::rotate(state, req)),
        ["images"] => ("/v1/images", list_images(state, req).await),
        ["images", name, tag, arch] => (
            "/v1/images/{name}/{tag}/{arch}",
            import_image(state, req, name, tag, arch, body).await,
        ),
        ["blobs", "sha256", digest] => {
            ("/v1/blobs/sha256/{digest}", blob(state, req, digest).await)
        }
        ["leader"] => ("/v1/leader", leader::serve(state, req)),
        ["events"] => ("/v1/events", events::serve(state, req).await),
        ["endpoints"] => ("/v1/endpoints", endpoints::serve(state, req, None).await),
        ["endpoints", role] => (
            "/v1/endpoints/{role}",
            endpoints::serve(state, req, Some(role)).await,
        ),
        _ => (
            "/v1/other",
            Err(ApiError::not_found(format!("no route {}", req.path))),
        ),
    }
}

fn bearer(req: &Request) -> Result<&str, ApiError> {
    req.headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized("missing credentials: send Authorization: Bearer TOKEN")
        })
}

async fn authenticate(state: &ApiState, req: &Request) -> Result<Principal, ApiError> {
    let token = bearer(req)?;
    if state.admin_token.matches(token) {
        return Ok(Principal::Admin);
    }
    match state.nodes.authenticate(token).await? {
        Some(node) => Ok(Principal::Node(node)),
        None => Err(ApiError::unauthorized("invalid token")),
    }
}

/// What a board's agent may do: read its own node and containers, report its own status.
async fn node_v1<S, B>(
    state: &ApiState,
    req: &Request,
    node: &str,
    rest: &[&str],
    body: S,
) -> (&'static str, Answer)
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    let forbidden = |what: &str| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("node {node} may not {what}"),
        ))
    };
    match rest {
        // Every board routes to every other board's subnet, so it may read the node list.
        ["nodes"] => ("/v1/nodes", list_nodes(state, req).await),
        ["nodes", name] if *name == node => ("/v1/nodes/{name}", read_node(state, req, name).await),
        ["nodes", name, "status"] if *name == node => (
            "/v1/nodes/{name}/status",
            heartbeat(state, req, name, body).await,
        ),
        ["containers"] if req.query.get("node").map(String::as_str) == Some(node) => {
            ("/v1/containers", list::<Container>(state, req).await)
        }
        ["containers"] => (
            "/v1/containers",
            forbidden("list containers of other nodes (add ?node=ITSELF)"),
        ),
        ["blobs", "sha256", digest] => {
            ("/v1/blobs/sha256/{digest}", blob(state, req, digest).await)
        }
        // Templates on the board render from every role's endpoints.
        ["endpoints"] => ("/v1/endpoints", endpoints::serve(state, req, None).await),
        ["endpoints", role] => (
            "/v1/endpoints/{role}",
            endpoints::serve(state, req, Some(role)).await,
        ),
        ["containers", name] => {
            let answer = match state.objects.get::<Container>(name).await {
                Ok(Some(c)) if c.spec.runs_on(node) => {
                    read_one::<Container>(state, req, name).await
                }
                Ok(_) => forbidden(&format!("read container {name}")),
                Err(e) => Err(e.into()),
            };
            ("/v1/containers/{name}", answer)
        }
        _ => (
            "/v1/other",
            forbidden(&format!("{} {}", req.method, req.path)),
        ),
    }
}

fn only(req: &Request, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(&req.method) {
        Ok(())
    } else {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        Err(ApiError::method_not_allowed(&names.join(", ")))
    }
}

async fn metrics(state: &ApiState, req: &Request) -> Answer {
    only(req, &[Method::GET])?;
    for kind in [Kind::Role, Kind::Node, Kind::Container] {
        let count = state.objects.count(kind).await?;
        state.metrics.set_objects(kind.as_str(), count as i64);
    }
    let (mut nodes, containers) = (state.objects.list().await?.0, state.objects.list().await?.0);
    state.nodes.fill_last_heartbeats(&mut nodes).await;
    state
        .metrics
        .set_cluster(&nodes, &containers, crate::clock::now_secs());
    let accept = req
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::from_accept(accept);
    let mut response = text(state.metrics.encode_as(format));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(format.content_type()),
    );
    Ok(response)
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    texu_api::validate_name(name)
        .map_err(|why| ApiError::bad_request(format!("invalid name {name:?}: {why}")))
}

/// Reads a request body, refusing more than [`MAX_BODY_BYTES`] whether or not a length is sent.
async fn read_body<S, B>(req: &Request, mut body: S) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, body.next()).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s ({} bytes came)",
                    BODY_TIMEOUT.as_secs(),
                    out.len()
                ),
            ));
        };
        let Some(chunk) = next else {
            break;
        };
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?;
        if out.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out)
}

fn parse_query(raw: &str) -> HashMap<String, String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (pair.to_string(), "true".to_string()),
        })
        .collect()
}

fn text(body: impl Into<String>) -> Response {
    let mut response = Response::new(body.into().into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON response with a status code.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = match serde_json::to_vec(value) {
        Ok(mut b) => {
            b.push(b'\n');
            b
        }
        Err(e) => {
            return ApiError::internal(format!("cannot encode the response: {e}")).into_response()
        }
    };
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests;
