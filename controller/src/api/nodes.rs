//! The node routes that boards and admins use on a board's node: joining (with its backoff),
//! heartbeats, admin labels, and reading nodes with the last heartbeat received.

use bytes::Buf;
use futures::Stream;
use warp::http::{header, Method, StatusCode};
use warp::reply::Response;

use super::{bearer, json, only, read_body, valid_name, Answer, ApiError, ApiState, Request};
use crate::nodes::{Heartbeat, JoinRequest, Joiner, NodeError};
use texu_api::{Kind, Node};

/// `POST /v1/join`: a new board with the join token, or an explicit re-join with the node's
/// own credential or the admin token. Repeated failures from one address get 429.
pub(super) async fn join<S, B>(state: &ApiState, req: &Request, body: S) -> Answer
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    let from = req.remote;
    if let Some(wait) = from.and_then(|ip| state.nodes.throttle().wait(ip)) {
        return Ok(too_many_joins(wait));
    }
    let answer = join_once(state, req, body).await;
    if let Some(ip) = from {
        match &answer {
            Ok(_) => state.nodes.throttle().succeed(ip),
            Err(e) if matches!(e.status, StatusCode::UNAUTHORIZED | StatusCode::CONFLICT) => {
                let penalty = state.nodes.throttle().fail(ip);
                if !penalty.is_zero() {
                    tracing::warn!(%ip, ?penalty, "repeated bad joins: address shut out");
                }
            }
            Err(_) => {}
        }
    }
    answer
}

async fn join_once<S, B>(state: &ApiState, req: &Request, body: S) -> Answer
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    let presented = bearer(req)?;
    let who = if state.join_token.matches(presented) {
        Joiner::JoinToken
    } else if state.admin_token.matches(presented) {
        Joiner::Admin
    } else if let Some(node) = state.nodes.authenticate(presented).await? {
        Joiner::Node(node)
    } else {
        return Err(ApiError::unauthorized("invalid join token"));
    };
    only(req, &[Method::POST])?;
    let bytes = read_body(req, body).await?;
    let join: JoinRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("request body is not a valid join request: {e}"))
    })?;
    valid_name(&join.name)?;
    let answer = state.nodes.join(join, who).await.map_err(node_error)?;
    Ok(json(StatusCode::OK, &answer))
}

/// 429 with `Retry-After` in whole seconds.
fn too_many_joins(wait: std::time::Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed joins from this address; retry in {secs}s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    response
}

/// The API's answer to a refused join, heartbeat or label change.
fn node_error(e: NodeError) -> ApiError {
    match e {
        NodeError::Object(o) => o.into(),
        NodeError::NameTaken { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        NodeError::OtherNode { .. } => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        NodeError::SubnetOutside { .. } => ApiError::unprocessable(e.to_string(), Vec::new()),
        NodeError::Invalid { ref errors, .. } => {
            ApiError::unprocessable(e.to_string(), errors.clone())
        }
        NodeError::NotLeader { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

pub(super) async fn heartbeat<S, B>(state: &ApiState, req: &Request, name: &str, body: S) -> Answer
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    only(req, &[Method::PUT])?;
    valid_name(name)?;
    let bytes = read_body(req, body).await?;
    let beat: Heartbeat = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("request body is not a valid heartbeat: {e}"))
    })?;
    match state.nodes.heartbeat(name, beat).await {
        Err(NodeError::NotLeader { leader }) => Ok(crate::api::leader::not_leader(leader)),
        Err(e) => Err(node_error(e)),
        Ok(()) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "result": "ok", "controllers": state.nodes.controllers() }),
        )),
    }
}

/// `texu label node NODE k=v k-`: admin labels, the ones placement uses. The body is
/// `{"labels": {"k": "v", "gone": null}}`: a string sets a label, `null` removes it.
pub(super) async fn label_node<S, B>(state: &ApiState, req: &Request, name: &str, body: S) -> Answer
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Changes {
        labels: std::collections::BTreeMap<String, Option<String>>,
    }
    only(req, &[Method::POST])?;
    valid_name(name)?;
    let bytes = read_body(req, body).await?;
    let changes: Changes = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "request body is not a label change ({{\"labels\": {{\"k\": \"v\", \"gone\": null}}}}): {e}"
        ))
    })?;
    let node = state
        .nodes
        .label(name, &changes.labels)
        .await
        .map_err(node_error)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "result": "labelled", "name": name, "object": node }),
    ))
}

/// `list::<Node>`, with each node's last heartbeat as this controller received it.
pub(super) async fn list_nodes(state: &ApiState, req: &Request) -> Answer {
    if req.query.contains_key("watch") || req.method != Method::GET {
        return super::list::<Node>(state, req).await;
    }
    let (mut items, revision) = state.objects.list::<Node>().await?;
    state.nodes.fill_last_heartbeats(&mut items).await;
    Ok(json(
        StatusCode::OK,
        &super::List {
            api_version: texu_api::API_VERSION,
            kind: format!("{}List", Kind::Node.as_str()),
            revision,
            items,
        },
    ))
}

/// `read_one::<Node>`, with the node's last heartbeat as this controller received it.
pub(super) async fn read_node(state: &ApiState, req: &Request, name: &str) -> Answer {
    only(req, &[Method::GET])?;
    valid_name(name)?;
    let mut node = state
        .objects
        .get::<Node>(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("node {name} not found")))?;
    state
        .nodes
        .fill_last_heartbeats(std::slice::from_mut(&mut node))
        .await;
    Ok(json(StatusCode::OK, &node))
}
