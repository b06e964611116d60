//! Watch over HTTP: a stream of newline-delimited JSON events, one per change.

use std::collections::HashSet;

use futures::StreamExt;
use texu_api::{Container, Kind};
use tokio_stream::wrappers::ReceiverStream;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::{ApiError, ApiState};

/// Events waiting to be written to a slow client before the watch gives up on it.
const CLIENT_BUFFER: usize = 256;
/// How often a quiet watch sends a `BOOKMARK` line, so a client can tell a quiet stream from a
/// dead connection (a partition leaves TCP silent) and list again.
pub const BOOKMARK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers `?watch=true`: every change after revision `after` (0: from now), as NDJSON lines.
pub async fn serve(
    state: &ApiState,
    kind: Kind,
    after: i64,
    role: Option<&String>,
    node: Option<&String>,
) -> Result<Response, ApiError> {
    let mut events = Box::pin(state.objects.watch(kind, after).await?);
    // A DELETED event carries only a name: remember which names matched the filters.
    let filtered = role.is_some() || node.is_some();
    let mut matching: HashSet<String> = HashSet::new();
    if filtered {
        let (items, _) = state.objects.list::<Container>().await?;
        for item in items {
            let value = serde_json::to_value(&item).unwrap_or_default();
            if matches_filters(&value, role, node) {
                matching.insert(item.metadata.name);
            }
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(CLIENT_BUFFER);
    let mut shutdown = state.shutdown.clone();
    let (role, node) = (role.cloned(), node.cloned());
    tokio::spawn(async move {
        let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
        bookmark.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        bookmark.tick().await;
        loop {
            let batch = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tx.closed() => break,
                _ = bookmark.tick() => None,
                batch = events.next() => Some(batch),
            };
            let Some(batch) = batch else {
                let line = serde_json::json!({ "type": "BOOKMARK" });
                if tx.send(Ok(line_of(&line))).await.is_err() {
                    break;
                }
                continue;
            };
            bookmark.reset();
            let events = match batch {
                None => break,
                Some(Ok(events)) => events,
                Some(Err(e)) => {
                    // Tell the client why the stream ends, so it can list again and resume.
                    let line = serde_json::json!({ "type": "ERROR", "error": e.to_string() });
                    let _ = tx.send(Ok(line_of(&line))).await;
                    break;
                }
            };
            for event in events {
                if filtered {
                    let name = event
                        .object
                        .pointer("/metadata/name")
                        .and_then(|n| n.as_str())
                        .unwrap_or_default()
                        .to_string();
                    let keep = if event.kind == "DELETED" {
                        matching.remove(&name)
                    } else if matches_filters(&event.object, role.as_ref(), node.as_ref()) {
                        matching.insert(name);
                        true
                    } else {
                        // Moved away from this filter: tell the watcher it is gone for it.
                        matching.remove(&name)
                    };
                    if !keep {
                        continue;
                    }
                }
                if tx.send(Ok(line_of(&event))).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut response = warp::reply::stream(ReceiverStream::new(rx)).into_response();
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

fn line_of<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// True when a container object matches the `?role=` and `?node=` filters (absent: any). A
/// node matches the containers bound to it and those handed off to it (drain, rebalance).
pub fn matches_filters(
    object: &serde_json::Value,
    role: Option<&String>,
    node: Option<&String>,
) -> bool {
    let field = |name: &str| {
        object
            .pointer(&format!("/spec/{name}"))
            .and_then(|v| v.as_str())
    };
    role.is_none_or(|r| field("role") == Some(r.as_str()))
        && node.is_none_or(|n| {
            field("node") == Some(n.as_str())
                || object
                    .pointer("/spec/handoff/node")
                    .and_then(|v| v.as_str())
                    == Some(n.as_str())
        })
}
