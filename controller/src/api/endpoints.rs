//! `GET /v1/endpoints` and `GET /v1/endpoints/{role}`: Ready containers per role and named
//! port, as a list or, with `?watch=true[&revision=N]`, followed as NDJSON lines.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde::Serialize;
use texu_api::{Role, RoleEndpoints};
use tokio_stream::wrappers::ReceiverStream;
use warp::http::{header, Method, StatusCode};
use warp::Reply;

use super::watch::BOOKMARK_EVERY;
use super::{json, only, valid_name, Answer, ApiError, ApiState, Request};
use crate::endpoints;

/// Lines waiting to be written to a slow client before the stream gives up on it.
const CLIENT_BUFFER: usize = 256;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointsList {
    api_version: &'static str,
    kind: &'static str,
    revision: i64,
    items: Vec<RoleEndpoints>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OneRole {
    api_version: &'static str,
    kind: &'static str,
    revision: i64,
    #[serde(flatten)]
    endpoints: RoleEndpoints,
}

/// Answers `GET /v1/endpoints[/{role}][?watch=true&revision=N]`.
pub async fn serve(state: &ApiState, req: &Request, role: Option<&str>) -> Answer {
    only(req, &[Method::GET])?;
    if let Some(role) = role {
        valid_name(role)?;
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
        return follow(state, role, after).await;
    }
    let (mut all, revision) = endpoints::current(&state.objects).await?;
    let Some(role) = role else {
        return Ok(json(
            StatusCode::OK,
            &EndpointsList {
                api_version: texu_api::API_VERSION,
                kind: "EndpointsList",
                revision,
                items: all.into_values().collect(),
            },
        ));
    };
    let endpoints = match all.remove(role) {
        Some(e) => e,
        // A role with no containers yet has its ports, empty.
        None => match state.objects.get::<Role>(role).await? {
            Some(r) => RoleEndpoints {
                role: role.to_owned(),
                ports: r
                    .spec
                    .ports
                    .iter()
                    .map(|p| (p.name.clone(), Vec::new()))
                    .collect::<BTreeMap<_, _>>(),
            },
            None => return Err(ApiError::not_found(format!("role {role} not found"))),
        },
    };
    Ok(json(
        StatusCode::OK,
        &OneRole {
            api_version: texu_api::API_VERSION,
            kind: "Endpoints",
            revision,
            endpoints,
        },
    ))
}

/// Streams endpoint changes as NDJSON (`MODIFIED`, `DELETED`, and a `BOOKMARK` when quiet).
async fn follow(state: &ApiState, role: Option<&str>, after: i64) -> Answer {
    let mut changes =
        Box::pin(endpoints::follow(state.objects.clone(), role.map(str::to_owned), after).await?);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(CLIENT_BUFFER);
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
        bookmark.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        bookmark.tick().await;
        loop {
            let batch = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tx.closed() => break,
                _ = bookmark.tick() => None,
                batch = changes.next() => Some(batch),
            };
            let lines: Vec<serde_json::Value> = match batch {
                None => vec![serde_json::json!({ "type": "BOOKMARK" })],
                Some(None) => break,
                Some(Some(Ok(batch))) if batch.is_empty() => continue,
                Some(Some(Ok(batch))) => {
                    bookmark.reset();
                    batch
                        .iter()
                        .filter_map(|c| serde_json::to_value(c).ok())
                        .collect()
                }
                Some(Some(Err(e))) => {
                    // Tell the client why the stream ends, so it can list again and resume.
                    let line = serde_json::json!({ "type": "ERROR", "error": e.to_string() });
                    let _ = tx.send(Ok(line_of(&line))).await;
                    break;
                }
            };
            for line in lines {
                if tx.send(Ok(line_of(&line))).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut response = warp::reply::stream(ReceiverStream::new(rx)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

fn line_of(value: &serde_json::Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line
}
