//! `GET /v1/events`: the controller's recent decisions as a list, or followed as NDJSON lines.

use serde::Serialize;
use texu_api::Event;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use warp::http::{header, Method, StatusCode};
use warp::Reply;

use super::{json, only, Answer, ApiError, ApiState, Request};
use crate::events::Events;

/// Lines waiting to be written to a slow client before the stream gives up on it.
const CLIENT_BUFFER: usize = 256;

/// The answer to a list: events oldest first, and the newest seq to watch after.
#[derive(Serialize)]
struct EventList {
    items: Vec<Event>,
    seq: u64,
}

/// Answers `GET /v1/events[?after=SEQ][&watch=true]`.
pub async fn serve(state: &ApiState, req: &Request) -> Answer {
    only(req, &[Method::GET])?;
    let after = match req.query.get("after") {
        None => 0,
        Some(s) => s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("after must be a non-negative integer, got {s:?}"))
        })?,
    };
    let events = state.objects.events();
    if req.query.get("watch").map(String::as_str) == Some("true") {
        return Ok(follow(state, events, after));
    }
    let (items, seq) = events.read(after);
    Ok(json(StatusCode::OK, &EventList { items, seq }))
}

/// Streams the ring's events after `after`, then each new one, until the client goes or the
/// controller shuts down. A follower that falls behind the live channel catches up from the
/// ring by seq, so it misses only what the ring itself no longer holds.
fn follow(state: &ApiState, events: &Events, after: u64) -> warp::reply::Response {
    // Subscribe before reading the backlog: nothing recorded in between is missed.
    let mut live = events.subscribe();
    let backlog = events.list(after);
    let events = events.clone();
    let mut shutdown = state.shutdown.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(CLIENT_BUFFER);
    tokio::spawn(async move {
        let mut sent = after;
        let mut pending = unsent(backlog, &mut sent);
        loop {
            for event in pending.drain(..) {
                let line = match serde_json::to_vec(&event) {
                    Ok(mut line) => {
                        line.push(b'\n');
                        line
                    }
                    Err(_) => continue,
                };
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            let next = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tx.closed() => return,
                next = live.recv() => next,
            };
            pending = match next {
                Ok(event) => unsent(vec![event], &mut sent),
                Err(RecvError::Lagged(_)) => {
                    let missed = events.list(sent);
                    unsent(missed, &mut sent)
                }
                Err(RecvError::Closed) => return,
            };
        }
    });
    let mut response = warp::reply::stream(ReceiverStream::new(rx)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// The events of `batch` after `sent`, moving `sent` to the last of them.
fn unsent(batch: Vec<Event>, sent: &mut u64) -> Vec<Event> {
    let fresh: Vec<Event> = batch.into_iter().filter(|e| e.seq > *sent).collect();
    if let Some(last) = fresh.last() {
        *sent = last.seq;
    }
    fresh
}
