//! The controller's HTTP/JSON API under `/v1`, plus `/healthz` and `/metrics`.
//!
//! One warp filter hands every request to [`handle`], which authenticates, routes by path
//! segments and answers JSON. Routing by hand keeps every `/v1` route behind one authentication
//! check and gives one place that turns errors into `{ "error": ..., "details": ... }`.

mod endpoints;
mod error;
mod events;
mod nodes;
mod watch;
pub use watch::WatchLimit;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Buf;
use futures::{Stream, StreamExt};
use serde::Serialize;
use texu_api::{Container, Kind, Node, Role, RoleBodyError};
use tokio::sync::watch as signal;
use warp::http::{header, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

pub use error::ApiError;

use crate::auth::Token;
use crate::images::{self, ImageError, ImageStore};
use crate::metrics::Metrics;
use crate::nodes::Nodes;
use crate::objects::{Object, Objects};
use nodes::{heartbeat, join, label_node, list_nodes, read_node};

/// Request bodies above this size are refused with 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Every `/v1` route as (method, pattern); `{name}` stands for an object name.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/roles"),
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
    pub join_token: Token,
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
        ["images"] => ("/v1/images", list_images(state, req).await),
        ["images", name, tag, arch] => (
            "/v1/images/{name}/{tag}/{arch}",
            import_image(state, req, name, tag, arch, body).await,
        ),
        ["blobs", "sha256", digest] => {
            ("/v1/blobs/sha256/{digest}", blob(state, req, digest).await)
        }
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

/// What `cordon` does to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cordon {
    /// No new containers.
    Only,
    /// No new containers, and the ones there move off, make-before-break.
    Drain,
    /// Schedulable again (ends a drain too).
    Uncordon,
}

/// Marks a node unschedulable (no new containers), draining, or schedulable again.
async fn cordon(state: &ApiState, req: &Request, name: &str, mode: Cordon) -> Answer {
    only(req, &[Method::POST])?;
    valid_name(name)?;
    let (unschedulable, draining, result) = match mode {
        Cordon::Only => (true, None, "cordoned"),
        Cordon::Drain => (true, Some(true), "draining"),
        Cordon::Uncordon => (false, Some(false), "uncordoned"),
    };
    for _ in 0..8 {
        let Some(mut node) = state.objects.get::<Node>(name).await? else {
            return Err(ApiError::not_found(format!("node {name} not found")));
        };
        let draining = draining.unwrap_or(node.spec.draining);
        if node.spec.unschedulable == unschedulable && node.spec.draining == draining {
            return Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "result": format!("already {result}"), "name": name }),
            ));
        }
        node.spec.unschedulable = unschedulable;
        node.spec.draining = draining;
        match state.objects.replace(&node).await {
            Ok(_) => {
                tracing::info!(node = name, result, "node");
                return Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "result": result, "name": name }),
                ));
            }
            Err(crate::objects::ObjectError::Stale { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("node {name} kept changing; try again"),
    ))
}

/// `texu replace ROLE-N --node NODE`: moves one member (a stateful one, whose board is gone)
/// to another board, where it starts with `replaces` set to its old address.
async fn replace(state: &ApiState, req: &Request, name: &str) -> Answer {
    only(req, &[Method::POST])?;
    valid_name(name)?;
    let Some(target) = req.query.get("node") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "say where: ?node=NODE".to_string(),
        ));
    };
    valid_name(target)?;
    for _ in 0..8 {
        let Some(current) = state.objects.get::<Container>(name).await? else {
            return Err(ApiError::not_found(format!("container {name} not found")));
        };
        let Some(role) = state.objects.get::<Role>(&current.spec.role).await? else {
            return Err(ApiError::not_found(format!(
                "role {} not found",
                current.spec.role
            )));
        };
        let (nodes, _) = state.objects.list::<Node>().await?;
        let (containers, _) = state.objects.list::<Container>().await?;
        let catalog = crate::scheduling::catalog(&state.objects).await?;
        let next = crate::scheduler::replace(&role, &nodes, &containers, &catalog, name, target)
            .map_err(|why| ApiError::new(StatusCode::CONFLICT, why))?;
        match state.objects.replace(&next).await {
            Ok(_) => {
                let from = current.spec.node.as_deref().unwrap_or("no node");
                let message = format!(
                    "{name} moves from {from} to {target}{}",
                    next.spec
                        .replaces
                        .map(|a| format!(", replacing {a}"))
                        .unwrap_or_default()
                );
                state.objects.events().record(
                    texu_api::EventKind::Replacing,
                    format!("container/{name}"),
                    Some(target),
                    message.clone(),
                );
                return Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "result": "replacing",
                        "name": name,
                        "node": target,
                        "replaces": next.spec.replaces,
                        "message": message,
                    }),
                ));
            }
            Err(crate::objects::ObjectError::Stale { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("container {name} kept changing; try again"),
    ))
}

async fn remove_node(state: &ApiState, name: &str) -> Answer {
    valid_name(name)?;
    if state.nodes.remove(name).await? {
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "result": "deleted", "kind": "Node", "name": name }),
        ))
    } else {
        Err(ApiError::not_found(format!("node {name} not found")))
    }
}

async fn list_images(state: &ApiState, req: &Request) -> Answer {
    only(req, &[Method::GET])?;
    let items = ImageStore::list(&state.objects).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "items": items })))
}

async fn import_image<S, B>(
    state: &ApiState,
    req: &Request,
    name: &str,
    tag: &str,
    arch: &str,
    body: S,
) -> Answer
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    only(req, &[Method::PUT])?;
    texu_api::ImageRef::parse(&format!("{name}:{tag}"))
        .map_err(|e| ApiError::bad_request(format!("image {name}:{tag}: {e}")))?;
    let arch: texu_api::Arch = arch.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "unknown architecture {arch:?}: expected amd64, arm64, armhf or armel"
        ))
    })?;
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > images::MAX_IMAGE_BYTES) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ImageError::TooLarge.to_string(),
        ));
    }
    let variant = state
        .images
        .import(name, tag, arch, body)
        .await
        .map_err(|e| match e {
            ImageError::TooLarge => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            ImageError::Upload(_) => ApiError::bad_request(e.to_string()),
            ImageError::Object(o) => o.into(),
            _ => ApiError::internal(e.to_string()),
        })?;
    Ok(json(StatusCode::OK, &variant))
}

/// Streams a blob by digest: agents download images this way and verify the digest.
async fn blob(state: &ApiState, req: &Request, digest: &str) -> Answer {
    only(req, &[Method::GET])?;
    let path = state
        .images
        .blob_path(digest)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(format!(
                "blob sha256:{digest} not found"
            )))
        }
        Err(e) => return Err(ApiError::internal(format!("cannot open blob: {e}"))),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        loop {
            let mut buf = vec![0u8; 64 << 10];
            match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let mut response = warp::Reply::into_response(warp::reply::stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
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
    let mut response = text(state.metrics.encode());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    Ok(response)
}

/// A list of objects with the revision it was read at, so a client can resume a watch.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct List<T> {
    api_version: &'static str,
    kind: String,
    revision: i64,
    items: Vec<T>,
}

pub(super) async fn list<T: Object>(state: &ApiState, req: &Request) -> Answer {
    only(req, &[Method::GET])?;
    let (role_filter, node_filter) = (req.query.get("role"), req.query.get("node"));
    for (param, value) in [("role", role_filter), ("node", node_filter)] {
        if let Some(v) = value {
            texu_api::validate_name(v)
                .map_err(|why| ApiError::bad_request(format!("query parameter {param}: {why}")))?;
        }
    }
    if req.query.get("watch").map(String::as_str) == Some("true") {
        let after = match req.query.get("revision") {
            None => 0,
            Some(r) => r.parse::<i64>().ok().filter(|r| *r >= 0).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "revision must be a non-negative integer, got {r:?}"
                ))
            })?,
        };
        return watch::serve(state, req, T::KIND, after, role_filter, node_filter).await;
    }
    let (mut items, revision) = state.objects.list::<T>().await?;
    if T::KIND == Kind::Container {
        items.retain(|item| {
            let value = serde_json::to_value(item).unwrap_or_default();
            watch::matches_filters(&value, role_filter, node_filter)
        });
    }
    Ok(json(
        StatusCode::OK,
        &List {
            api_version: texu_api::API_VERSION,
            kind: format!("{}List", T::KIND.as_str()),
            revision,
            items,
        },
    ))
}

async fn read_one<T: Object>(state: &ApiState, req: &Request, name: &str) -> Answer {
    only(req, &[Method::GET])?;
    get::<T>(state, name).await
}

async fn get<T: Object>(state: &ApiState, name: &str) -> Answer {
    valid_name(name)?;
    match state.objects.get::<T>(name).await? {
        Some(obj) => Ok(json(StatusCode::OK, &obj)),
        None => Err(ApiError::not_found(format!(
            "{} {name} not found",
            T::KIND.as_str().to_lowercase()
        ))),
    }
}

/// The answer to an apply: what happened and the object as stored.
#[derive(Serialize)]
struct Applied<T> {
    result: &'static str,
    #[serde(rename = "dryRun", skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
    object: T,
}

async fn put_role<S, B>(state: &ApiState, req: &Request, name: &str, body: S) -> Answer
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    valid_name(name)?;
    let bytes = read_body(req, body).await?;
    let role = texu_api::parse_json_role(&bytes).map_err(|e| match e {
        RoleBodyError::Invalid(errors) => ApiError::unprocessable(
            format!("role {name} is invalid"),
            errors.iter().map(ToString::to_string).collect(),
        ),
        RoleBodyError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        RoleBodyError::Json { .. } => ApiError::bad_request(e.to_string()),
    })?;
    if role.metadata.name != name {
        return Err(ApiError::bad_request(format!(
            "metadata.name {:?} does not match the name in the path {name:?}",
            role.metadata.name
        )));
    }
    let dry_run = req.query.get("dryRun").map(String::as_str) == Some("true");
    let (outcome, stored) = state.objects.apply_role(role, dry_run).await?;
    let status = match outcome {
        crate::objects::ApplyOutcome::Created if !dry_run => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    if !dry_run {
        tracing::info!(
            role = name,
            result = outcome.as_str(),
            generation = stored.meta().generation,
            "role applied"
        );
    }
    Ok(json(
        status,
        &Applied {
            result: outcome.as_str(),
            dry_run,
            object: stored,
        },
    ))
}

async fn delete(state: &ApiState, kind: Kind, name: &str) -> Answer {
    valid_name(name)?;
    if state.objects.delete(kind, name).await? {
        tracing::info!(kind = kind.as_str(), name, "deleted");
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "result": "deleted", "kind": kind.as_str(), "name": name }),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "{} {name} not found",
            kind.as_str().to_lowercase()
        )))
    }
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
    while let Some(chunk) = body.next().await {
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
