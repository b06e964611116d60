//! Watch over HTTP: a stream of newline-delimited JSON events, one per change.
//!
//! Each credential may hold a bounded number of open watches ([`MAX_WATCHES`]; 429 beyond), and
//! each watch buffers a bounded number of lines for a slow client. A watch from a revision that
//! compaction removed is answered 410 Gone (or, when the history goes while it streams, an
//! `ERROR` line with `"code": 410`): the client lists again and watches from the new revision.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use texu_api::{Container, Kind};
use tokio_stream::wrappers::ReceiverStream;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::{ApiError, ApiState, Request};
use crate::store::StoreError;

/// Events waiting to be written to a slow client; the watch waits for it meanwhile.
const CLIENT_BUFFER: usize = 16;
/// Most watches one credential may have open at once.
pub const MAX_WATCHES: usize = 32;
/// What a client told its watch is gone should do.
pub const RESYNC_HINT: &str =
    "resync: list again (the same GET without watch=true) and watch from the list's revision";

/// Open watches per credential.
#[derive(Default)]
pub struct WatchLimit {
    open: Arc<Mutex<HashMap<u64, usize>>>,
}

/// One open watch, counted against its credential until dropped.
struct WatchSlot {
    open: Arc<Mutex<HashMap<u64, usize>>>,
    key: u64,
}

impl WatchLimit {
    fn acquire(&self, credential: &str) -> Option<WatchSlot> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        credential.hash(&mut hasher);
        let key = hasher.finish();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_default();
        if *count >= MAX_WATCHES {
            return None;
        }
        *count += 1;
        Some(WatchSlot {
            open: self.open.clone(),
            key,
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}
/// How often a quiet watch sends a `BOOKMARK` line, so a client can tell a quiet stream from a
/// dead connection (a partition leaves TCP silent) and list again.
pub const BOOKMARK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers `?watch=true`: every change after revision `after` (0: from now), as NDJSON lines.
pub async fn serve(
    state: &ApiState,
    req: &Request,
    kind: Kind,
    after: i64,
    role: Option<&String>,
    node: Option<&String>,
) -> Result<Response, ApiError> {
    let credential = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let slot = state.watches.acquire(credential).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many open watches for this credential (at most {MAX_WATCHES})"),
        )
    })?;
    // A DELETED event carries only a name: remember which names matched the filters.
    let filtered = role.is_some() || node.is_some();
    let mut matching: HashSet<String> = HashSet::new();
    if filtered {
        // Only the containers that may match are copied out of the store and decoded: a
        // thousand boards starting their watches at once each hold their own ten, not all.
        let needles = filter_needles(role, node);
        let (items, _) = state.objects.list_containing::<Container>(&needles).await?;
        for item in items {
            if container_matches(&item, role, node) {
                matching.insert(item.metadata.name);
            }
        }
    }
    let mut events = if filtered {
        let mut maybe = Prefilter::new(role, node, matching.clone());
        Box::pin(
            state
                .objects
                .watch_where(kind, after, move |k, kv| maybe.keep(k, kv))
                .await?,
        ) as std::pin::Pin<Box<dyn futures::Stream<Item = _> + Send>>
    } else {
        Box::pin(state.objects.watch(kind, after).await?)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(CLIENT_BUFFER);
    let mut shutdown = state.shutdown.clone();
    let (role, node) = (role.cloned(), node.cloned());
    tokio::spawn(async move {
        let _slot = slot;
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
            let events = match batch {
                None => break,
                Some(Ok(events)) => events,
                Some(Err(e)) => {
                    // Tell the client why the stream ends, so it can list again and resume.
                    let line = match &e {
                        crate::objects::ObjectError::Store(StoreError::Compacted { .. }) => {
                            serde_json::json!({
                                "type": "ERROR",
                                "code": 410,
                                "error": e.to_string(),
                                "details": [RESYNC_HINT],
                            })
                        }
                        _ => serde_json::json!({ "type": "ERROR", "error": e.to_string() }),
                    };
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
                // Only a line sent counts as a sign of life: changes that all concern other
                // boards must not hold back the bookmarks.
                bookmark.reset();
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

/// [`matches_filters`] on a typed container.
fn container_matches(c: &Container, role: Option<&String>, node: Option<&String>) -> bool {
    role.is_none_or(|r| &c.spec.role == r)
        && node.is_none_or(|n| {
            c.spec.node.as_ref() == Some(n) || c.spec.handoff.as_ref().is_some_and(|h| &h.node == n)
        })
}

/// Passes over, before decoding, the changes of a filtered watch that cannot concern it: a
/// stored container names its node and role as `"node":"NAME"` and `"role":"NAME"` (compact
/// JSON), so a change without them is not for this watch, unless it is a container that was
/// (it moved away or was deleted: the watch tells its client). Keeps a superset of what
/// [`matches_filters`] then decides on.
struct Prefilter {
    patterns: Vec<memchr::memmem::Finder<'static>>,
    /// Every name a kept change may have matched: a superset of the watch's own set.
    maybe: HashSet<String>,
}

impl Prefilter {
    fn new(role: Option<&String>, node: Option<&String>, matching: HashSet<String>) -> Self {
        let patterns = filter_needles(role, node)
            .iter()
            .map(|p| memchr::memmem::Finder::new(p).into_owned())
            .collect();
        Prefilter {
            patterns,
            maybe: matching,
        }
    }

    fn keep(&mut self, kind: crate::store::EventKind, kv: &crate::store::KeyValue) -> bool {
        let name = kv.key.rsplit('/').next().unwrap_or_default();
        let may_match = kind == crate::store::EventKind::Put
            && self.patterns.iter().all(|p| p.find(&kv.value).is_some());
        if may_match {
            self.maybe.insert(name.to_string());
            true
        } else {
            self.maybe.remove(name)
        }
    }
}

/// What the stored JSON of every container matching the `?role=` and `?node=` filters
/// contains: `"role":"NAME"` and `"node":"NAME"` (compact JSON; a handoff's node too). A
/// superset: the exact decision is [`matches_filters`].
pub fn filter_needles(role: Option<&String>, node: Option<&String>) -> Vec<Vec<u8>> {
    let pattern = |field: &str, value: &String| {
        let mut p = format!("\"{field}\":").into_bytes();
        p.extend(serde_json::to_vec(value).unwrap_or_default());
        p
    };
    let mut needles = Vec::new();
    needles.extend(role.map(|r| pattern("role", r)));
    needles.extend(node.map(|n| pattern("node", n)));
    needles
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventKind, KeyValue};
    use texu_api::{ContainerSpec, Handoff};

    fn put(c: &Container) -> (EventKind, KeyValue) {
        let kv = KeyValue {
            key: format!("/texu/v1/containers/{}", c.metadata.name),
            value: serde_json::to_vec(c).unwrap(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
        };
        (EventKind::Put, kv)
    }

    fn on(node: Option<&str>) -> Container {
        Container::new(
            "app-0",
            ContainerSpec {
                role: "app".into(),
                node: node.map(str::to_string),
                ..Default::default()
            },
        )
    }

    #[test]
    fn the_prefilter_keeps_every_change_that_concerns_the_board() {
        let node = "b1".to_string();
        let mut pre = Prefilter::new(None, Some(&node), HashSet::new());
        let keep = |pre: &mut Prefilter, c: &Container| {
            let (k, kv) = put(c);
            (pre.keep(k, &kv), container_matches(c, None, Some(&node)))
        };
        // Elsewhere and never here: passed over (and it would not match).
        assert_eq!(keep(&mut pre, &on(Some("b10"))), (false, false));
        assert_eq!(keep(&mut pre, &on(None)), (false, false));
        // Placed here: kept.
        assert_eq!(keep(&mut pre, &on(Some("b1"))), (true, true));
        // Moved away: kept once, so the board hears it is gone; then passed over.
        assert_eq!(keep(&mut pre, &on(Some("b2"))), (true, false));
        assert_eq!(keep(&mut pre, &on(Some("b2"))), (false, false));
        // A move to here (the new copy): kept.
        let mut moving = on(Some("b2"));
        moving.spec.handoff = Some(Handoff {
            node: "b1".into(),
            reason: "drain".into(),
            image_digest: None,
            status: None,
        });
        assert_eq!(keep(&mut pre, &moving), (true, true));
        // Its deletion: kept; a deletion of what was never here: passed over.
        let gone = KeyValue {
            value: Vec::new(),
            ..put(&moving).1
        };
        assert!(pre.keep(EventKind::Delete, &gone));
        assert!(!pre.keep(EventKind::Delete, &gone));
    }
}
